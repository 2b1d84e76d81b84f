"""``best.yaml``: the best trial of a study so far, as overrides that re-run it.

Written atomically by every sweeper process after each batch of trials (all read the same study, so they
write the same content)::

    study: bbc-news-minilm-full-lr-batch
    storage: runs/search/bbc-news-minilm-full-lr-batch/journal.log
    direction: maximize
    value: 0.947            # the trial's objective: its best checkpoint's task.monitor
    trial: 7
    params: {optimizer.lr: 4.1e-05, task.data.batch_size: 32, scheduler.warmup_ratio: 0.06}
    run_dir: runs/bbc-news-minilm-full/5f0c2e8a1d
    overrides: [task=bbc-news, hparams_search=lr-batch, optimizer.lr=4.1e-05, ...]
    command: python train.py task=bbc-news hparams_search=lr-batch optimizer.lr=4.1e-05 ...
    trials: {complete: 18, pruned: 5, fail: 1, running: 0, waiting: 0}

``command`` is the search's own command line without ``-m``, plus the trial's values: the overrides that
composed the trial's config, ``hparams_search=...`` included (it sets only ``hydra.sweeper``, which a run
without ``-m`` ignores; kept, the config is the trial's even if a search config sets other keys). So it finds
the trial's run folder (its run_id) and returns its metrics without training again (``resume=auto``);
``resume=never`` trains the same config afresh.
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tunelab.io import atomic_write_text


def rerun_overrides(fixed: Sequence[str], params: Mapping[str, str]) -> list[str]:
    """The overrides of one trial outside the search: the fixed ones, then the trial's values (``params``:
    key -> its ``key=value`` override)."""
    return [*fixed, *params.values()]


def command(overrides: Sequence[str], program: str | None = None) -> str:
    """The shell command that runs ``overrides``: ``python train.py ...`` (or the entry point the search ran as,
    e.g. ``tunelab-train``)."""
    program = program if program is not None else sys.argv[0]
    start = ["python", program] if program.endswith(".py") else [Path(program).name or "tunelab-train"]
    return shlex.join([*start, *overrides])


def write_best(path: Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` (the keys of the module's example, ``overrides`` and ``command`` included) to ``path``."""
    content = {**record, "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(path, yaml.safe_dump(content, sort_keys=False, width=1000))
