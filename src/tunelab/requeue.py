"""Exact resumption: a Slurm requeue checkpoint taken at a batch boundary, and RNG states in checkpoints.

Lightning's own auto-requeue saves its ``hpc_ckpt_<n>.ckpt`` inside the SIGUSR1 handler, i.e. at an
arbitrary point of a training step (after ``optimizer.step`` but before the loop counted the batch or
stepped the LR scheduler, say), so a resumed run replays or skips part of a batch. Lightning's
checkpoints also leave out the random states, so dropout masks after a resume differ from an
uninterrupted run. ``ResumeCallback`` replaces both (``train.py`` turns Lightning's handling off with
``SLURMEnvironment(auto_requeue=False)``):

- under Slurm, SIGUSR1 only sets a flag (``tunelab.slurm_signal``, caught from process start to exit, so a
  signal during imports, data loading, test or export does not end the process); at the next
  ``on_train_batch_start`` (the previous batch is complete and its LR scheduler step done; a signal that came
  before training: the first batch) all ranks agree on it (a rank that got the signal a little later still
  saves at the same step), save the hpc checkpoint where Lightning saves it (so a resume finds it), rank 0
  logs the requeue and calls ``before_requeue`` (``train.py``: ``status.json`` says ``requeued``) and only
  then runs ``scontrol requeue``, since Slurm ends the job's processes as soon as it accepts the requeue;
  training stops with ``Requeued``;
- every checkpoint it is part of carries the torch/numpy/python (and CUDA) random states of every rank;
  a checkpoint saved at a batch start restores them at the first batch start of the resumed run (the
  same point of the computation), any other (end of epoch) when it is loaded.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from tunelab import slurm_signal
from tunelab.distributed import every_rank
from tunelab.slurm_signal import slurm_managed as slurm_managed  # re-exported: train.py imports it from here

log = logging.getLogger(__name__)


class Requeued(SystemExit):
    """Training stopped after saving the requeue checkpoint; Slurm restarts the job, which resumes it."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message

    def __str__(self) -> str:
        return self.message


def slurm_job_id(env: Any = None) -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for array jobs, else the job id."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


class ResumeCallback(L.Callback):
    """See the module docstring. ``requeue_signal=None`` disables the Slurm part (RNG states only);
    ``before_requeue(message)`` runs on rank 0 after the requeue checkpoint is saved, before ``scontrol requeue``."""

    def __init__(self, requeue_signal: signal.Signals | None = slurm_signal.REQUEUE_SIGNAL,
                 before_requeue: Callable[[str], None] | None = None):
        self.requeue_signal = requeue_signal
        self.before_requeue = before_requeue
        self._rank, self._world = 0, 1
        self._pending_rng: dict[str, Any] | None = None
        self._saving_at_batch_start = False

    # --- the requeue signal ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank, self._world = trainer.global_rank, trainer.world_size
        if stage == "fit" and self.requeue_signal is not None:
            slurm_signal.catch(self.requeue_signal)  # cli.train catches it at process start; kept until exit

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resume mid-epoch at the right batch. Lightning builds the training iterator before it restores
        the checkpoint when the LR schedule asks for ``trainer.estimated_stepping_batches`` (FitLoop.setup_data
        then returns early), so the loaders' saved state (``ResumableDataLoader``: batches done) is never
        applied: apply it here and start the iterator again, in the resumed epoch's sample order."""
        fit_loop = trainer.fit_loop
        states, loader = fit_loop._combined_loader_states_to_load, fit_loop._combined_loader
        if not (fit_loop.restarting and states and loader is not None and fit_loop._data_fetcher is not None):
            return
        if not any(0 < int(s.get("completed_batches", 0)) < len(dl)
                   for s, dl in zip(states, loader.flattened, strict=False) if isinstance(s, dict)):
            return  # saved at an epoch boundary: nothing to skip, the iterator is right as it is
        for dl in loader.flattened:
            _set_sampler_epoch(dl, fit_loop.epoch_progress.current.processed)
        fit_loop._load_combined_loader_states()
        iter(fit_loop._data_fetcher)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:  # resumed from a batch-start checkpoint: continue its random streams
            _set_rng_states(self._pending_rng)
            self._pending_rng = None
        if self.requeue_signal is None:
            return
        # A collective on every batch (one boolean): ranks that got the signal at different times agree here.
        if not trainer.strategy.reduce_boolean_decision(slurm_signal.received(), all=False):
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        self._saving_at_batch_start = True
        try:
            trainer.save_checkpoint(path)
        finally:
            self._saving_at_batch_start = False
        for logger in trainer.loggers:
            logger.save()
        trainer.strategy.barrier("tunelab-requeue")  # every rank's part of the checkpoint is written
        slurm_signal.clear()
        saved = f"requeue signal: saved {path} at step {trainer.global_step}"
        message = f"{saved}; the requeued job resumes from it"
        if trainer.is_global_zero:
            # Slurm ends this process soon after it accepts `scontrol requeue`: log and record the requeue first.
            log.info("%s", message)
            if self.before_requeue is not None:
                self.before_requeue(message)
            if not requeue_job():
                message = f"{saved}, but the job is not requeued: resubmit the same command to resume from it"
        raise Requeued(message)

    # --- random states -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        states = _portable(_collect_rng_states(include_cuda=True))
        return {"rng_states": per_rank(states, self._world), "at_batch_start": self._saving_at_batch_start}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._saving_at_batch_start:
            # Lightning's restart adds one to the logging step unless the save happened in on_train_batch_end
            # or at the end of an epoch (TrainingEpochLoop.reset); a batch start needs one less to log on.
            epoch_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
            if epoch_loop.get("_batches_that_stepped"):
                epoch_loop["_batches_that_stepped"] -= 1

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("rng_states") or []
        if len(states) != self._world:
            log.warning("checkpoint has random states of %d rank(s), this run has %d: not restoring them "
                        "(dropout masks will differ from an uninterrupted run)", len(states), self._world)
            return
        if state_dict.get("at_batch_start"):
            self._pending_rng = _native(states[self._rank])
        else:
            _set_rng_states(_native(states[self._rank]))


def per_rank(state: Any, world: int) -> list[Any]:
    """Every rank's ``state``, in rank order, for a checkpoint that each rank resumes its own part of. A
    collective under a process group: callbacks' ``state_dict`` runs on every rank (``dump_checkpoint``)."""
    return every_rank(state) if world > 1 else [state]


def _portable(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states in types that ``torch.load(weights_only=True)`` accepts (numpy's array as a tensor)."""
    if "numpy" in states:
        name, keys, *rest = states["numpy"]
        states = {**states, "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest)}
    return states


def _native(states: dict[str, Any]) -> dict[str, Any]:
    if "numpy" in states:
        name, keys, *rest = states["numpy"]
        states = {**states, "numpy": (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), *rest)}
    return states


def requeue_job() -> bool:
    """``scontrol requeue`` this job (array jobs: this task); returns whether Slurm accepted it."""
    job_id = slurm_job_id()
    if not job_id or not re.fullmatch(r"[0-9_]+", job_id):
        log.warning("requeue signal outside a Slurm batch job (SLURM_JOB_ID=%r): not requeueing", job_id)
        return False
    try:
        proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("`scontrol requeue %s` could not run (%s)", job_id, err)
        return False
    if proc.returncode == 0:
        log.info("Requeued Slurm job %s", job_id)
        return True
    log.warning("`scontrol requeue %s` failed (%s): is the job submitted with --requeue?", job_id,
                (proc.stderr or proc.stdout).strip())
    return False
