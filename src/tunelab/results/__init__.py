"""Results tables and figures from run folders or W&B: ``python -m tunelab.results --help``.

Modules, one per concern: ``records`` (the run record), ``collect`` (run folders -> records),
``wandb_runs`` (W&B runs -> records), ``aggregate`` (varying keys, seed groups, mean ± std, problem
runs), ``render`` (Markdown, LaTeX), ``plots`` (efficiency and learning-curve figures), ``cli``.
"""
