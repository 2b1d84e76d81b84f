"""The sweeper's settings (``hydra.sweeper.*``) as Hydra's ConfigStore holds them; no Optuna import here, as
Hydra imports the plugin (and so this module) at every start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random (tunelab.search.study.SAMPLERS)
    # Each trial's proposal is drawn with seed + trial number: reproducible, and different in every process.
    seed: int | None = None


@dataclass
class PrunerConf:
    """A trial's run reports at each validation, its steps counting validations (0, 1, ...: the epochs)."""

    name: str = "median"  # median | hyperband | none (tunelab.search.study.PRUNERS)
    n_startup_trials: int = 5  # median: trials that finish before any is pruned
    n_warmup_steps: int = 0  # median: validations of a trial before it may be pruned
    min_resource: int = 1  # hyperband: validations before the first pruning decision
    max_resource: Any = "auto"  # hyperband: validations of a full trial, or auto (the longest trial so far)
    reduction_factor: int = 3  # hyperband: 1/reduction_factor of the trials go on at each rung


@dataclass
class SweeperConf:
    _target_: str = "hydra_plugins.tunelab_optuna_sweeper.sweeper.TunelabOptunaSweeper"
    direction: str = "minimize"  # minimize | maximize the value the task function returns
    study_name: str = "search"
    # The study's folder: its journal (unless storage names another), ask.lock and best.yaml.
    dir: str = "${hydra.sweep.dir}/search/${hydra.sweeper.study_name}"
    # null: the journal file <dir>/journal.log; else another journal file's path, or a database URL (sqlite:///...)
    storage: str | None = None
    n_trials: int = 20  # trials the study runs in all (any outcome), all processes together
    n_jobs: int = 1  # trials this process launches at a time through the Hydra launcher
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # key: search space, in Hydra's sweep syntax: choice(...), range(...), interval(a, b), tag(log, interval(a, b))
    params: dict[str, Any] = field(default_factory=dict)
