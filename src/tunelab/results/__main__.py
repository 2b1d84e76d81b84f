"""``python -m tunelab.results``: see ``tunelab.results.cli``."""

from tunelab.results.cli import main

raise SystemExit(main())
