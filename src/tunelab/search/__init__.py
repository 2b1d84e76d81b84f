"""Hyperparameter search on Optuna, through tunelab's own Hydra sweeper (``hparams_search=<name>``).

One Optuna study lives in a storage that any number of sweeper processes share: by default a journal file on
the shared filesystem (``<paths.root_dir>/search/<study>/journal.log``). Each process asks the study for
trials, launches them through Hydra's launcher as ordinary runs (each its own run folder), and tells the study
how each ended; the study stops growing at ``n_trials`` whichever processes ran them. A trial's run reports its
validation curve to its trial, and stops when the pruner says so.

Modules: ``config`` (the sweeper's settings, as Hydra stores them), ``space`` (the search space syntax and
overrides), ``study`` (storage, samplers, pruners), ``sweep`` (the sweeper's loop), ``report`` (the run's
side: validation curve and pruning), ``best`` (``best.yaml``). The Hydra plugin itself is
``hydra_plugins.tunelab_optuna_sweeper``. Only ``sweep``, ``study`` and ``report`` import Optuna.
"""

from __future__ import annotations

from tunelab.errors import TunelabError


class TrialPruned(Exception):  # Optuna's name for the same event
    """A search trial's run stopped early by the study's pruner: not a failure, the study records it as pruned."""


class SearchFailed(TunelabError):
    """Every trial that this process ran failed: the search cannot learn anything from its runs."""
