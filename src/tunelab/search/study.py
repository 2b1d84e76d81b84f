"""The study's side of a search: its storage, the samplers and pruners a config may name (an allow-list:
nothing named in a config or read back from the study is imported or built otherwise), and which process
a trial belongs to."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial

from tunelab.errors import ConfigError

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
}
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
# Trial user attributes that tunelab sets: the process that asked for the trial (``worker``), the pruner its run
# consults (``pruner``), and, from the run itself, its folder, the metric it reports and where it trained.
WORKER, PRUNER, RUN_DIR, MONITOR, SLURM_JOB, HOST = "worker", "pruner", "run_dir", "monitor", "slurm_job_id", "host"
ASK_LOCK_GRACE_S = 300  # the ask lock is held for seconds: one this old was left by a killed process

log = logging.getLogger(__name__)


def is_url(storage: str) -> bool:
    """A database URL (``sqlite:///...``, ``postgresql://...``) rather than a journal file's path."""
    return "://" in storage


def open_storage(storage: str) -> BaseStorage:
    """The storage that ``storage`` names: a database URL, or the path of a journal file (created if missing).
    The journal takes a lock by creating a symbolic link, which works on NFS, so any job on any node that sees
    the file can share the study."""
    # Optuna's own handler prints every tell at INFO: tunelab logs the outcomes itself, Optuna's warnings
    # go through the run's logging (console and train.log).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    if is_url(storage):
        if storage.startswith("sqlite:///"):  # sqlite creates the file, not its folder
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(storage)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


@contextlib.contextmanager
def exclusive(path: Path, grace_period: int = ASK_LOCK_GRACE_S) -> Iterator[None]:
    """Hold ``<path>.lock`` (Optuna's symlink lock, NFS-safe: a symbolic link to ``path``) while counting the
    study's trials and asking for new ones, so that processes sharing a study create exactly ``n_trials``
    between them. Holding it takes seconds, so a lock older than ``grace_period`` seconds is stale (its holder
    was killed) and is broken at once; one that a waiter sees unchanged for ``grace_period`` seconds is broken
    too (Optuna's own rule, which watches the mtime of ``path`` from the moment the waiter arrives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The target must exist: Optuna's waiter stats it through the link, and on a dangling link it retries at
    # once, without sleeping and without ever applying its grace period. Opening it leaves its mtime alone.
    with path.open("a"):
        pass
    lock = JournalFileSymlinkLock(str(path), grace_period=grace_period)
    break_stale(Path(f"{path}.lock"), grace_period)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def break_stale(lock: Path, grace_period: float) -> None:
    """Remove the symbolic link ``lock`` if it was made more than ``grace_period`` seconds ago (its own mtime,
    not its target's); renamed aside first, so that of two processes breaking it only one removes it."""
    try:
        age = time.time() - lock.lstat().st_mtime
    except FileNotFoundError:
        return
    if age <= grace_period:
        return
    log.warning("breaking %s, taken %.0f s ago (more than %d s): its holder is gone", lock, age, grace_period)
    aside = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
    try:  # (a lock taken afresh between the lstat and this rename would go too: as in Optuna's forced release)
        os.rename(lock, aside)
    except FileNotFoundError:  # another process broke it first
        return
    os.unlink(aside)


def build_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler.name={name!r}: one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed=seed)


def build_pruner(settings: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner of ``hydra.sweeper.pruner`` (also stored on each trial, for its run to consult)."""
    name = settings.get("name")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(settings["n_startup_trials"]),
                                           n_warmup_steps=int(settings["n_warmup_steps"]))
    if name == "hyperband":
        top = settings["max_resource"]
        return optuna.pruners.HyperbandPruner(min_resource=int(settings["min_resource"]),
                                              max_resource=top if top == "auto" else int(top),
                                              reduction_factor=int(settings["reduction_factor"]))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"hydra.sweeper.pruner.name={name!r}: one of {', '.join(PRUNERS)}")


def worker_id() -> str:
    """Who asks for a trial: ``slurm:<job id>.<task>`` in a Slurm job (the same after a requeue, so a requeued job
    takes its unfinished trials up again), else ``<host>:<pid>``."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        return f"slurm:{job}.{os.environ.get('SLURM_PROCID', '0')}"
    return f"{socket.gethostname()}:{os.getpid()}"


def abandoned(trial: FrozenTrial) -> bool:
    """Whether running ``trial`` was left by a process of this host that is gone (killed: ``kill -9``, the OOM
    killer, a closed terminal): its worker is ``<this host>:<pid>`` with no such process, and its run did not go
    to a Slurm job of its own or to another host, where it may still be training."""
    here = socket.gethostname()
    host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
    if host != here or not pid.isdigit() or SLURM_JOB in trial.user_attrs or trial.user_attrs.get(HOST, here) != here:
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def open_trial(storage: str, study_name: str, number: int) -> optuna.Trial:
    """Trial ``number`` of the study, as the run of that trial sees it: it reports to it, and asks it whether to
    stop with the pruner stored on the trial by the sweeper."""
    store = open_storage(storage)
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study_name), number)
    pruner = build_pruner(store.get_trial(trial_id).user_attrs.get(PRUNER) or {"name": "none"})
    study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner)
    return optuna.Trial(study, trial_id)  # the live trial object of Study.ask, for an existing trial
