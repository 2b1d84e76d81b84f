"""The sweeper's loop: ask the shared study for trials, launch them as runs, tell it how each ended.

Any number of processes may run the same search command against one study (K Slurm jobs pointing at one
journal file, say): each asks for at most ``n_jobs`` trials at a time while the study holds fewer than
``n_trials`` (counted and asked under a lock, so together they create exactly ``n_trials``), launches them
through the configured Hydra launcher (in this process one after another, or as Slurm jobs with
``hydra/launcher=slurm``) and tells the study each outcome:

- the run returned its value (the best checkpoint's ``task.monitor``): COMPLETE with that value;
- the run was stopped by the pruner (``tunelab.search.TrialPruned``): PRUNED;
- anything else (an error, no value, a Slurm job lost): FAIL, with the error as the trial's ``error``
  attribute; the search goes on, and ends with an error only when every trial of this process failed.

When the launcher itself fails for a batch (``hydra/launcher=slurm``: one lost job, while the others may have
finished), each trial of the batch is told what its run folder says (``status.json``, ``metrics.json``).

The first process creates the study and records the search in it (``search``: the fixed overrides, the
searched distributions, the direction); a process whose search differs is refused, so searches with other
fixed overrides (``seed=2``, another ``few_shot.k``) never mix their trials in one study.

A process first takes up the trials left running by its own Slurm job before a requeue (``worker`` attribute,
the job id survives a requeue) and by a process of its host that is gone (``worker`` ``<host>:<pid>``, killed
outside Slurm): their runs resume from their checkpoints. After each batch it writes ``best.yaml``
(``tunelab.search.best``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import distribution_to_json
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tunelab.errors import ConfigError
from tunelab.search import SearchFailed, TrialPruned
from tunelab.search.best import command, rerun_overrides, write_best
from tunelab.search.space import Space, format_override, parse_space
from tunelab.search.study import (
    DIRECTIONS,
    MONITOR,
    PRUNER,
    RUN_DIR,
    WORKER,
    abandoned,
    build_pruner,
    build_sampler,
    exclusive,
    open_storage,
    worker_id,
)

log = logging.getLogger(__name__)
Launch = Callable[[Sequence[Sequence[str]], int], Sequence[JobReturn]]
ERROR = "error"  # trial user attribute: why a trial failed
# Study user attributes: the search that created the study, and hyperband's max_resource=auto once resolved.
SEARCH, MAX_RESOURCE = "search", "hyperband_max_resource"


@dataclass(frozen=True)
class Settings:
    """``hydra.sweeper.*`` (``tunelab.search.config.SweeperConf``), checked."""

    direction: str
    study_name: str
    dir: Path
    storage: str
    n_trials: int
    n_jobs: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    params: dict[str, Any]

    @classmethod
    def from_config(cls, *, direction: str, study_name: str, dir: str, storage: str | None, n_trials: int,
                    n_jobs: int, sampler: Any, pruner: Any, params: Any) -> Settings:
        def plain(node: Any) -> dict[str, Any]:
            return dict(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node or {})

        if direction not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.direction={direction!r}: one of {', '.join(DIRECTIONS)}")
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key} must be a whole number >= 1, got {value!r}")
        settings = cls(direction, str(study_name), Path(dir), str(storage or Path(dir) / "journal.log"), n_trials,
                       n_jobs, plain(sampler), plain(pruner), plain(params))
        build_sampler(settings.sampler.get("name", "tpe"), None)  # names checked before any trial
        build_pruner(settings.pruner)
        return settings


class Search:
    """One process's part of a search: ``run(arguments)`` until the study holds ``n_trials`` trials."""

    def __init__(self, settings: Settings, launch: Launch, validate: Callable[[Sequence[Sequence[str]]], None],
                 parser: OverridesParser | None = None) -> None:
        self.settings, self.launch, self.validate = settings, launch, validate
        self.parser = parser or OverridesParser.create()
        self.worker = worker_id()
        self.storage: BaseStorage | None = None
        self.study: optuna.Study | None = None
        self.outcomes: Counter[str] = Counter()

    def run(self, arguments: Sequence[str]) -> FrozenTrial | None:
        """Run trials of the study with the command line's ``arguments``; returns the study's best trial."""
        s = self.settings
        space = parse_space(s.params, arguments, self.parser)
        if not space.distributions:
            raise ConfigError("hparams_search: nothing to search (hydra.sweeper.params is empty, and no override is "
                              "a sweep such as optimizer.lr=interval(1e-5,1e-3))")
        self.storage = open_storage(s.storage)
        with exclusive(s.dir / "ask"):  # one process creates the study and records its search
            study = optuna.create_study(study_name=s.study_name, storage=self.storage, direction=s.direction,
                                        pruner=build_pruner(s.pruner), load_if_exists=True)
            if study.direction.name.lower() != s.direction:
                raise ConfigError(f"study {s.study_name} in {s.storage} was created to "
                                  f"{study.direction.name.lower()}, not {s.direction}: name another study "
                                  f"(hydra.sweeper.study_name)")
            self._check_search(study, self._search(space))
            resumable = self._take_up(study)
        self.study = study
        log.info("search %s (%s %s): %d trials in all, %d there already; %d at a time from %s; storage %s",
                 s.study_name, s.direction, ", ".join(space.distributions), s.n_trials, len(study.trials), s.n_jobs,
                 self.worker, s.storage)
        last_error: BaseException | None = None
        while True:
            batch, resumable = resumable[:s.n_jobs], resumable[s.n_jobs:]
            batch = batch or self._ask(study, space)
            if not batch:
                break
            last_error = self._run_batch(study, space, batch) or last_error
            self._write_best(study, space)
        if not self.outcomes:  # nothing left to run: best.yaml as this command would write it
            self._write_best(study, space)
        return self._finish(study, space, last_error)

    def _take_up(self, study: optuna.Study) -> list[FrozenTrial]:
        """The running trials this process runs first (their runs resume from their checkpoints): those its own
        Slurm job left before a requeue, and those whose process on this host is gone (``abandoned``), which it
        claims as their worker. Called under the ask lock, so that two processes never claim one trial."""
        requeued, orphans = [], []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if self.worker.startswith("slurm:") and trial.user_attrs.get(WORKER) == self.worker:
                requeued.append(trial)
            elif abandoned(trial):
                log.warning("trial %d was left running by %s, which is gone: this process takes it up",
                            trial.number, trial.user_attrs[WORKER])
                self._set_attr(study, trial.number, WORKER, self.worker)
                orphans.append(trial)
        if requeued:
            log.info("taking up trial(s) %s, left running by this Slurm job before its requeue",
                     ", ".join(str(t.number) for t in requeued))
        return requeued + orphans

    def _search(self, space: Space) -> dict[str, Any]:
        """What makes a trial of this search: the direction, the fixed overrides (without the search's own:
        ``hparams_search=``, ``hydra...``), and each searched key's distribution."""
        def own(line: str) -> bool:
            key = self.parser.parse_override(line).key_or_group
            return key in ("hparams_search", "hydra") or key.startswith(("hydra.", "hydra/"))

        return {"direction": self.settings.direction, "fixed": sorted(o for o in space.fixed if not own(o)),
                "space": {k: distribution_to_json(d) for k, d in sorted(space.distributions.items())}}

    def _check_search(self, study: optuna.Study, search: dict[str, Any]) -> None:
        """Record ``search`` in a new study (or one made without it); refuse a study of another search."""
        s = self.settings
        recorded = study.user_attrs.get(SEARCH)
        if recorded is None:
            study.set_user_attr(SEARCH, search)
            return
        if recorded == search:
            return
        differences = []
        if recorded.get("direction") != search["direction"]:
            differences.append(f"direction {recorded.get('direction')} there, {search['direction']} here")
        there, here = recorded.get("fixed", []), search["fixed"]
        if there != here:
            differences.append(f"fixed overrides {[o for o in there if o not in here]} there, "
                               f"{[o for o in here if o not in there]} here")
        spaces = recorded.get("space", {}), search["space"]
        for key in sorted(spaces[0].keys() | spaces[1].keys()):
            if spaces[0].get(key) != spaces[1].get(key):
                differences.append(f"{key}: {spaces[0].get(key, 'not searched')} there, "
                                   f"{spaces[1].get(key, 'not searched')} here")
        raise ConfigError(f"study {s.study_name} in {s.storage} belongs to another search: "
                          f"{'; '.join(differences)}. Name this search's own study with "
                          f"hydra.sweeper.study_name=<name>, or run the study's search unchanged")

    def _pruner(self, study: optuna.Study) -> dict[str, Any]:
        """``hydra.sweeper.pruner``; hyperband's ``max_resource: auto`` fixed for the study (as Optuna does, from
        the longest completed trial) once a trial has completed, so that this process's sampler and every run
        split the trials into the same brackets."""
        pruner = self.settings.pruner
        if pruner.get("name") != "hyperband" or pruner.get("max_resource") != "auto":
            return pruner
        top = study.user_attrs.get(MAX_RESOURCE)
        if top is None:
            steps = [t.last_step for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.last_step is not None]
            if not steps:
                return pruner
            top = max(steps) + 1
            study.set_user_attr(MAX_RESOURCE, top)
        return {**pruner, "max_resource": top}

    def _ask(self, study: optuna.Study, space: Space) -> list[FrozenTrial]:
        """Up to ``n_jobs`` new trials (queued ones first: ``Study.enqueue_trial``) while the study holds fewer than
        ``n_trials`` that have started, under the study's lock."""
        s = self.settings
        with exclusive(s.dir / "ask"):
            trials = study.get_trials(deepcopy=False)
            started = sum(t.state != TrialState.WAITING for t in trials)  # queued trials are asked for first
            pruner = self._pruner(study)
            study.pruner = build_pruner(pruner)  # the sampler draws within hyperband's bracket of the trial
            asked = []
            for i in range(min(s.n_jobs, s.n_trials - started)):
                seed = s.sampler.get("seed")
                # A fresh sampler per trial, seeded by the new trial's number: samplers keep no state but their
                # random generator, and two processes with one seed would otherwise propose the same values.
                study.sampler = build_sampler(s.sampler.get("name", "tpe"),
                                              None if seed is None else seed + len(trials) + i)
                trial = study.ask(space.distributions)
                trial.set_user_attr(WORKER, self.worker)
                trial.set_user_attr(PRUNER, pruner)
                asked.append(study.get_trials(deepcopy=False)[trial.number])
        return asked

    def _overrides(self, trial: FrozenTrial, space: Space) -> list[str]:
        s = self.settings
        search = {"search.storage": s.storage, "search.study": s.study_name, "search.trial": trial.number}
        return [*space.fixed, *self._params(trial, space).values(),
                *(format_override(k, v, self.parser) for k, v in search.items())]

    def _params(self, trial: FrozenTrial, space: Space) -> dict[str, str]:
        return {k: space.override(k, v, self.parser) for k, v in trial.params.items()}

    def _run_batch(self, study: optuna.Study, space: Space, batch: list[FrozenTrial]) -> BaseException | None:
        """Launch the batch's runs and tell the study their outcomes; returns the last error of a failed trial."""
        overrides = [self._overrides(t, space) for t in batch]
        try:
            self.validate(overrides)  # composes each trial's config here, before any job starts
        except Exception as err:
            for trial in batch:
                self._tell_failed(study, trial.number, err)
            raise
        try:
            returns = self.launch(overrides, batch[0].number)
        except Exception as err:  # e.g. a Slurm job of the batch lost: the others may have finished
            log.error("the launcher failed for trial(s) %s: %s; each is told what its run folder says",
                      ", ".join(str(t.number) for t in batch), err)
            last_error = None
            for trial in batch:
                last_error = self._tell(study, trial.number, self._run_folder_outcome(study, trial.number, err))
            return last_error
        last_error = None
        for trial, ret in zip(batch, returns, strict=True):
            last_error = self._tell(study, trial.number, ret) or last_error
        return last_error

    def _tell(self, study: optuna.Study, number: int, ret: JobReturn) -> BaseException | None:
        output = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
        if output:  # also when the run was not trained again (completed before): its reporter did not run
            self._set_attr(study, number, RUN_DIR, str(output))
        result = ret._return_value  # the job's return value or exception; ret.return_value would re-raise it
        if ret.status == JobStatus.COMPLETED:
            try:
                value = float(result)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                return self._tell_failed(study, number, ValueError(
                    f"the run returned {result!r}, not a value of task.monitor (missing from its validation metrics?)"))
            study.tell(number, value)
            self.outcomes["complete"] += 1
            best = study.best_trial
            log.info("trial %d: %.6g (best so far: %.6g, trial %d)", number, value, best.value, best.number)
            return None
        if isinstance(result, TrialPruned):
            study.tell(number, state=TrialState.PRUNED)
            self.outcomes["pruned"] += 1
            log.info("trial %d %s", number, result)
            return None
        return self._tell_failed(study, number, result)

    def _run_folder_outcome(self, study: optuna.Study, number: int, err: BaseException) -> JobReturn:
        """How trial ``number``'s run ended, from its run folder (the ``run_dir`` its run recorded): ``status.json``
        completed -> its value, ``metrics.json``'s ``val`` metric of the ``monitor`` its run reported (what the run
        returns); pruned -> pruned; else (no folder, running, failed) ``err``. JSON only."""
        attrs = study.get_trials(deepcopy=False)[number].user_attrs
        run_dir, monitor = attrs.get(RUN_DIR), attrs.get(MONITOR)
        status = read_json(Path(run_dir) / "status.json") if run_dir else {}
        if status.get("status") == "completed" and isinstance(monitor, str):
            val = read_json(Path(run_dir) / "metrics.json").get("val")
            value = val.get(monitor.removeprefix("val/")) if isinstance(val, dict) else None
            return JobReturn(status=JobStatus.COMPLETED, _return_value=value)
        if status.get("status") == "pruned":
            return JobReturn(status=JobStatus.FAILED, _return_value=TrialPruned(str(status.get("reason", ""))))
        return JobReturn(status=JobStatus.FAILED, _return_value=err)

    def _set_attr(self, study: optuna.Study, number: int, key: str, value: Any) -> None:
        """Set a user attribute of a trial that is still running (Optuna refuses it on a finished one)."""
        storage = self.storage
        assert storage is not None
        study_id = storage.get_study_id_from_name(study.study_name)
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, number), key, value)

    def _tell_failed(self, study: optuna.Study, number: int, err: BaseException) -> BaseException:
        log.warning("trial %d failed: %s: %s", number, type(err).__name__, err)
        if study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
            self._set_attr(study, number, ERROR, f"{type(err).__name__}: {err}")
            study.tell(number, state=TrialState.FAIL)
        self.outcomes["fail"] += 1
        return err

    def _write_best(self, study: optuna.Study, space: Space) -> None:
        s = self.settings
        trials = study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.COMPLETE for t in trials):
            return
        best = study.best_trial
        overrides = rerun_overrides(space.fixed, self._params(best, space))
        counts = Counter(t.state.name.lower() for t in trials)
        write_best(s.dir / "best.yaml", {
            "study": s.study_name, "storage": s.storage, "direction": s.direction, "value": best.value,
            "trial": best.number, "params": dict(best.params), "run_dir": best.user_attrs.get(RUN_DIR),
            "overrides": overrides, "command": command(overrides),
            "trials": {state.name.lower(): counts.get(state.name.lower(), 0) for state in TrialState},
        })

    def _finish(self, study: optuna.Study, space: Space, last_error: BaseException | None) -> FrozenTrial | None:
        s = self.settings
        ran = sum(self.outcomes.values())
        if ran == 0:
            log.info("study %s holds %d trials already (hydra.sweeper.n_trials=%d): nothing to run; raise n_trials "
                     "to continue it", s.study_name, len(study.trials), s.n_trials)
        else:
            log.info("this process ran %d trial(s): %s", ran, ", ".join(f"{n} {k}" for k, n in self.outcomes.items()))
        if ran and self.outcomes["fail"] == ran and last_error is not None:
            raise SearchFailed(f"every trial that this process ran failed ({ran}); the last: "
                               f"{type(last_error).__name__}: {last_error}") from last_error
        try:
            best = study.best_trial
        except ValueError:
            log.warning("study %s has no completed trial yet", s.study_name)
            return None
        log.info("best trial %d: %.6g; %s; re-run it: %s", best.number, best.value, s.dir / "best.yaml",
                 command(rerun_overrides(space.fixed, self._params(best, space))))
        return best


def read_json(path: Path) -> dict[str, Any]:
    """A run folder's JSON file as a dict; ``{}`` when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
