"""The run's side of a search trial: report ``task.monitor`` at each validation of fit to the trial, and stop
training when the study's pruner says the trial cannot catch up. ``tunelab.train`` adds the callback when
the sweeper named the trial in ``search.*``."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig
from optuna.exceptions import UpdateFinishedTrialError

from tunelab.search import TrialPruned
from tunelab.search.study import HOST, MONITOR, RUN_DIR, SLURM_JOB, open_trial

log = logging.getLogger(__name__)


class TrialReporter(L.Callback):
    """Rank 0 reports the monitored metric to the trial and asks the pruner; every rank gets its answer, and a
    pruned trial stops at the end of that validation, like early stopping. ``pruned`` then says why, and
    ``raise_if_pruned`` ends the run as pruned.

    The step of a report is the validation's index in the run (0, 1, ...: the epoch, when validating once per
    epoch), not the optimizer step: pruners compare trials at equal steps, and trials of different batch sizes
    (a searched key) take different numbers of optimizer steps per epoch. The count is part of the callback's
    state in checkpoints, so a resumed run goes on counting.

    A trial that the study holds finished already (its sweeper told it FAIL, say, when the launcher failed) takes
    no more reports: the run goes on without reporting, and without pruning.
    """

    def __init__(self, search: DictConfig, monitor: str, run_dir: str | os.PathLike) -> None:
        self.storage, self.study_name, self.number = str(search.storage), str(search.study), int(search.trial)
        self.monitor, self.run_dir = monitor, Path(run_dir)
        self.trial: Any = None
        self.validations = 0
        self.pruned: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.trial is not None:
            return
        self.trial = open_trial(self.storage, self.study_name, self.number)
        attrs = {RUN_DIR: str(self.run_dir), MONITOR: self.monitor, HOST: socket.gethostname()}
        if os.environ.get("SLURM_JOB_ID"):
            attrs[SLURM_JOB] = os.environ["SLURM_JOB_ID"]
        try:
            for key, value in attrs.items():
                self.trial.set_user_attr(key, value)
        except UpdateFinishedTrialError as err:
            self._stop_reporting(err)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.validations += 1
        reason = None
        if trainer.is_global_zero and self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                value = float(value)
                try:
                    self.trial.report(value, step=self.validations - 1)
                    if self.trial.should_prune():
                        reason = (f"pruned by {type(self.trial.study.pruner).__name__} at validation "
                                  f"{self.validations} (epoch {trainer.current_epoch}, step {trainer.global_step}): "
                                  f"{self.monitor} {value:.4g}")
                except UpdateFinishedTrialError as err:
                    self._stop_reporting(err)
        reason = trainer.strategy.broadcast(reason, src=0)
        if reason:
            log.info("search trial %d %s", self.number, reason)
            self.pruned = reason
            trainer.should_stop = True

    def _stop_reporting(self, err: UpdateFinishedTrialError) -> None:
        log.warning("search trial %d is finished in its study already (%s): this run goes on, reporting to it no "
                    "more", self.number, err)
        self.trial = None

    def raise_if_pruned(self) -> None:
        if self.pruned:
            raise TrialPruned(self.pruned)

