"""Hyperparameter search (tunelab.search, hydra/sweeper=tunelab): the search-space syntax, overrides that Hydra
reads back unchanged, the shipped hparams_search configs, the sweeper's loop on a toy Hydra app (direction,
failures, a study shared by two processes, a full study, a requeued Slurm job's trial), and, marked slow, real
searches with the tiny model: two processes sharing one study, the best trial re-run, pruning."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tests.conftest import tiny_overrides
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.search.best import rerun_overrides
from tunelab.search.report import TrialReporter
from tunelab.search.space import distribution, format_override, parse_space
from tunelab.search.study import MONITOR, PRUNER, RUN_DIR, SLURM_JOB, WORKER, exclusive, open_storage
from tunelab.search.sweep import MAX_RESOURCE, Search, Settings

ROOT = Path(__file__).resolve().parents[1]
PARSER = OverridesParser.create()


@pytest.mark.parametrize(("syntax", "expected"), [
    ("choice(16, 32, 64)", CategoricalDistribution([16, 32, 64])),
    ("16,32,64", CategoricalDistribution([16, 32, 64])),
    ("choice(adamw, sgd)", CategoricalDistribution(["adamw", "sgd"])),
    ("range(1, 5)", IntDistribution(1, 4)),
    ("range(1, 6, 2)", IntDistribution(1, 5, step=2)),
    ("range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
    ("shuffle(range(1, 4))", CategoricalDistribution([1, 2, 3])),
    ("interval(0.0, 0.3)", FloatDistribution(0.0, 0.3)),
    ("tag(log, interval(1e-5, 1e-3))", FloatDistribution(1e-5, 1e-3, log=True)),
    ("tag(int, interval(1, 64))", IntDistribution(1, 64)),
    ("tag(int, log, interval(1, 64))", IntDistribution(1, 64, log=True)),
])
def test_each_search_syntax_maps_to_its_optuna_distribution(syntax: str, expected: object) -> None:
    got = distribution(PARSER.parse_override(f"k={syntax}"))
    if isinstance(expected, CategoricalDistribution):
        assert isinstance(got, CategoricalDistribution) and sorted(got.choices) == sorted(expected.choices)
    else:
        assert got == expected
    override = PARSER.parse_override(f"k={syntax}")
    if override.is_range_sweep() and not isinstance(got, CategoricalDistribution):  # Hydra's own sweep's values
        values = sorted(override.sweep_iterator())
        assert got.low == pytest.approx(values[0]) and got.high == pytest.approx(values[-1])
        assert round((got.high - got.low) / got.step) + 1 == len(values)


@pytest.mark.parametrize("syntax", ["tag(int, interval(0.5, 3))", "tag(exp, interval(1, 2))", "range(5, 1)", "glob(*)"])
def test_a_space_that_cannot_be_searched_is_refused(syntax: str) -> None:
    with pytest.raises(Exception, match="k="):
        distribution(PARSER.parse_override(f"k={syntax}"))


def test_the_command_line_fixes_or_adds_searched_keys() -> None:
    params = {"optimizer.lr": "tag(log, interval(1e-5, 1e-3))", "task": {"data": {"batch_size": "choice(16, 32)"}},
              "scheduler.warmup_ratio": 0.1}
    space = parse_space(params, ["task.data.batch_size=8", "seed=choice(1, 2)", "hparams_search=lr-batch"])
    assert space.distributions == {"optimizer.lr": FloatDistribution(1e-5, 1e-3, log=True),
                                   "seed": CategoricalDistribution([1, 2])}
    # Fixed overrides exactly as written: params' fixed values, then the command line's.
    assert space.fixed == ["scheduler.warmup_ratio=0.1", "task.data.batch_size=8", "hparams_search=lr-batch"]


@pytest.mark.parametrize("value", [1e-5, 0.1 + 0.2, 3.0, 16, 0, True, False, None, "adamw", "true", "16", "1e-3",
                                   "null", "a b", "x,y", "it's", 'say "hi"', "/runs/x:y", "sqlite:///runs/o.db"])
def test_a_value_becomes_an_override_that_hydra_reads_back_unchanged(value: object) -> None:
    text = format_override("a.b", value)
    parsed = PARSER.parse_override(text)
    assert parsed.get_key_element() == "a.b" and not parsed.is_sweep_override()
    assert parsed.value() == value and type(parsed.value()) is type(value), text


@pytest.mark.parametrize(("syntax", "values"), [
    ("null,0.01", [None, 0.01]),  # (Hydra's parser refuses null inside choice(...): the simple form takes it)
    ("'a b',c", ["a b", "c"]),
    ("choice('a b', c)", ["a b", "c"]),
    ("choice([q,v],[q,k,v,o])", [["q", "v"], ["q", "k", "v", "o"]]),
    ("[q,v],all,{a:1}", [["q", "v"], "all", {"a": 1}]),
    ("choice(['x y',z],'[z]')", [["x y", "z"], "[z]"]),
])
def test_each_choice_reaches_the_trials_config_as_written(syntax: str, values: list, toy_app: Path) -> None:
    space = parse_space({}, [f"kind={syntax}"])
    (choices,) = [d.choices for d in space.distributions.values()]
    with initialize_config_dir(config_dir=str(toy_app / "conf"), version_base="1.3"):
        composed = [OmegaConf.to_container(compose("config", overrides=[space.override("kind", c)]))["kind"]
                    for c in choices]
    assert composed == values


def test_a_list_choice_that_reads_as_a_string_choice_is_refused() -> None:
    with pytest.raises(Exception, match="k=choice"):
        parse_space({}, ["k=choice([z],'[z]')"])


def test_fixed_values_in_params_keep_their_type() -> None:
    space = parse_space({"a": None, "b": 0.1, "c": True, "d": "1e-4", "e": "choice(1, 2)"}, [])
    assert [PARSER.parse_override(o).value() for o in space.fixed] == [None, 0.1, True, 1e-4]


@pytest.mark.parametrize(("option", "extra"), [("lr-batch", []), ("lora", ["tuning=lora"])])
def test_every_hparams_search_option_composes_and_searches_keys_that_exist(option: str, extra: list[str],
                                                                            tmp_path: Path, compose_cfg) -> None:
    assert {p.stem for p in (CONFIG_DIR / "hparams_search").glob("*.yaml")} == {"lr-batch", "lora"}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={option}", *extra, f"paths.root_dir={tmp_path}"],
                      return_hydra_config=True)
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "tunelab"
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert sweeper.pop("_target_") == "hydra_plugins.tunelab_optuna_sweeper.sweeper.TunelabOptunaSweeper"
    settings = Settings.from_config(**sweeper)
    assert settings.direction == f"{cfg.task.monitor_mode}imize" == "maximize"
    assert settings.study_name == f"{cfg.run_name}-{option}"
    assert settings.storage == str(tmp_path / "search" / settings.study_name / "journal.log")
    assert settings.sampler == {"name": "tpe", "seed": cfg.seed} and settings.pruner["name"] == "median"
    space = parse_space(settings.params, [])
    assert len(space.distributions) == 3 and not space.fixed
    for key in space.distributions:
        assert OmegaConf.select(cfg, key, default="absent") != "absent", key
    # Outside hydra.*, the search config sets nothing: best.yaml's command (it keeps hparams_search=...) and a
    # command without it compose the same run.
    searched, plain = (OmegaConf.to_container(compose_cfg(*search, *extra), resolve=True)
                       for search in ([f"hparams_search={option}"], []))
    assert searched == plain and searched["run_id"] == plain["run_id"]
    assert rerun_overrides([f"hparams_search={option}", *extra], {"optimizer.lr": "optimizer.lr=0.001"}) == [
        f"hparams_search={option}", *extra, "optimizer.lr=0.001"]


def test_a_run_of_a_search_trial_has_the_same_identity_as_its_rerun(compose_cfg) -> None:
    plain = compose_cfg("optimizer.lr=1e-4")
    trial = compose_cfg("optimizer.lr=1e-4", "search.storage=/x/journal.log", "search.study=s", "search.trial=3")
    assert trial.search.trial == 3 and trial.run_id == plain.run_id
    assert compose_cfg("optimizer.lr=2e-4").run_id != plain.run_id


def test_pruners_and_samplers_come_from_their_names_only() -> None:
    from tunelab.search.study import build_pruner, build_sampler

    def pruned(settings: dict, finished: int) -> bool:  # a trial far behind `finished` finished ones, at step 1
        study = optuna.create_study(pruner=build_pruner(settings))
        for _ in range(finished):
            trial = study.ask()
            trial.report(1.0, step=1)
            study.tell(trial, 1.0)
        trial = study.ask()
        trial.report(5.0, step=1)
        return trial.should_prune()

    median = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}
    assert pruned(median, finished=2) and not pruned(median, finished=1)
    assert not pruned({**median, "n_warmup_steps": 2}, finished=2)  # step 1 is still in the warm-up
    assert not pruned({"name": "none"}, finished=3)
    hyperband = build_pruner({"name": "hyperband", "min_resource": 1, "max_resource": "auto", "reduction_factor": 3})
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert isinstance(build_sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(build_sampler("tpe", 0), optuna.samplers.TPESampler)
    with pytest.raises(ConfigError, match="one of tpe, random"):
        build_sampler("optuna.samplers.GridSampler", 0)
    with pytest.raises(ConfigError, match="one of median, hyperband, none"):
        build_pruner({"name": "percentile"})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("direction", "max", "hydra.sweeper.direction='max': one of minimize, maximize"),
    ("n_trials", 0, "hydra.sweeper.n_trials must be a whole number >= 1"),
    ("n_jobs", 1.5, "hydra.sweeper.n_jobs must be a whole number >= 1"),
])
def test_bad_sweeper_settings_are_refused(key: str, value: object, message: str, tmp_path: Path) -> None:
    settings = {"direction": "minimize", "study_name": "s", "dir": str(tmp_path), "storage": None, "n_trials": 2,
                "n_jobs": 1, "sampler": {"name": "tpe"}, "pruner": {"name": "none"}, "params": {}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_config(**{**settings, key: value})


# A Hydra app with a known objective, searched by the tunelab sweeper: (x - 2)^2, plus 1 for kind b.
TOY_APP = '''
import time
import hydra

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    time.sleep(cfg.sleep)
    if cfg.kind == cfg.fail_kind:
        raise ValueError(f"kind {cfg.kind} fails")
    if cfg.kind == cfg.no_value_kind:
        return None
    return (cfg.x - 2) ** 2 + (0 if cfg.kind == "a" else 1)

if __name__ == "__main__":
    main()
'''
TOY_CONFIG = {
    "defaults": ["_self_", {"override hydra/sweeper": "tunelab"}],
    "x": 0.0, "kind": "a", "fail_kind": None, "no_value_kind": None, "sleep": 0.0, "root": "???",
    "search": {"storage": None, "study": None, "trial": None},
    "hydra": {"sweep": {"dir": "${root}", "subdir": "${hydra.job.num}"},
              "sweeper": {"study_name": "toy", "n_trials": 6, "sampler": {"seed": 0},
                          "params": {"x": "interval(-4, 4)", "kind": "choice(a, b)"}}},
}


def toy(x: float, kind: str) -> float:
    return (x - 2) ** 2 + (0 if kind == "a" else 1)


@pytest.fixture
def toy_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "conf").mkdir(parents=True)
    (app / "app.py").write_text(TOY_APP)
    (app / "conf" / "config.yaml").write_text(yaml.safe_dump(TOY_CONFIG))
    return app


def sweep(app: Path, *overrides: str, env: dict[str, str] | None = None, wait: bool = True):
    cmd = [sys.executable, str(app / "app.py"), "-m", f"root={app.parent / 'out'}", *overrides]
    proc = subprocess.Popen(cmd, cwd=app, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def load(root: Path, name: str = "toy") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(root / "search" / name / "journal.log")))


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_best_trial_follows_the_direction(toy_app: Path, direction: str) -> None:
    rc, out = sweep(toy_app, f"hydra.sweeper.direction={direction}", f"hydra.sweeper.study_name={direction}")
    assert rc == 0, out
    study = load(toy_app.parent / "out", direction)
    assert study.direction.name.lower() == direction
    values = {t.number: toy(**t.params) for t in study.trials}
    assert len(values) == 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.number: t.value for t in study.trials} == pytest.approx(values)  # the app's own return values
    pick = min if direction == "minimize" else max
    best = yaml.safe_load((toy_app.parent / "out" / "search" / direction / "best.yaml").read_text())
    assert best["value"] == pytest.approx(pick(values.values())) and best["trial"] == pick(values, key=values.get)
    assert best["direction"] == direction and best["trials"]["complete"] == 6
    params = study.trials[best["trial"]].params
    assert best["params"] == params
    assert best["overrides"] == [f"root={toy_app.parent / 'out'}", *(f"{k}={v!r}" if k == "x" else f"{k}={v}"
                                                                     for k, v in params.items())]
    assert best["command"] == shlex.join(["python", str(toy_app / "app.py"), *best["overrides"]])
    assert best["run_dir"] == str(toy_app.parent / "out" / str(best["trial"]))  # Hydra's job folder of the trial


def test_the_seed_makes_proposals_reproducible(toy_app: Path) -> None:
    def params(study: str, seed: int) -> list[dict]:
        rc, out = sweep(toy_app, f"hydra.sweeper.study_name={study}", "hydra.sweeper.sampler.name=random",
                        f"hydra.sweeper.sampler.seed={seed}", "hydra.sweeper.n_trials=3")
        assert rc == 0, out
        return [t.params for t in load(toy_app.parent / "out", study).trials]

    first = params("a", seed=3)
    assert params("b", seed=3) == first and params("c", seed=4) != first


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_another_journal_file_or_a_database_url_holds_the_study(toy_app: Path, storage: str) -> None:
    where = toy_app.parent / "elsewhere" / ("study.log" if storage == "journal" else "optuna.db")
    spec = str(where) if storage == "journal" else f"sqlite:///{where}"
    rc, out = sweep(toy_app, f"hydra.sweeper.storage={spec}", "hydra.sweeper.n_trials=2")
    assert rc == 0, out
    study = optuna.load_study(study_name="toy", storage=open_storage(spec))
    assert where.is_file() and [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert not (toy_app.parent / "out" / "search" / "toy" / "journal.log").exists()
    assert yaml.safe_load((toy_app.parent / "out" / "search" / "toy" / "best.yaml").read_text())["storage"] == spec


def test_failed_trials_are_told_fail_and_the_search_goes_on(toy_app: Path) -> None:
    rc, out = sweep(toy_app, "fail_kind=b")
    assert rc == 0, out
    study = load(toy_app.parent / "out")
    assert len(study.trials) == 6
    for trial in study.trials:
        failed = trial.params["kind"] == "b"
        assert trial.state == (TrialState.FAIL if failed else TrialState.COMPLETE), trial
        assert (trial.user_attrs.get("error") == "ValueError: kind b fails") == failed
        assert trial.user_attrs[WORKER] and trial.user_attrs[PRUNER]["name"] == "median"
    assert any(t.params["kind"] == "b" for t in study.trials) and f"trial {study.trials[-1].number}" in out

    rc, out = sweep(toy_app, "no_value_kind=b", "hydra.sweeper.study_name=no-value")
    assert rc == 0, out
    for trial in load(toy_app.parent / "out", "no-value").trials:  # a run without a value fails, too
        failed = trial.params["kind"] == "b"
        assert (trial.state == TrialState.FAIL) == failed
        assert trial.user_attrs.get("error", "").startswith("ValueError: the run returned None, not a value") == failed

    rc, out = sweep(toy_app, "fail_kind=a", "kind=a", "hydra.sweeper.study_name=broken", "hydra.sweeper.n_trials=2")
    assert rc == 1 and "every trial that this process ran failed (2); the last: ValueError: kind a fails" in out
    assert "Traceback" not in out


def test_a_full_study_runs_nothing_more_until_n_trials_grows(toy_app: Path) -> None:
    assert sweep(toy_app, "hydra.sweeper.n_trials=3")[0] == 0
    rc, out = sweep(toy_app, "hydra.sweeper.n_trials=3")
    assert rc == 0 and "holds 3 trials already (hydra.sweeper.n_trials=3): nothing to run" in out
    assert sweep(toy_app, "hydra.sweeper.n_trials=5")[0] == 0
    study = load(toy_app.parent / "out")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert len({t.user_attrs[WORKER] for t in study.trials}) == 2  # three processes: 3 + 0 + 2 trials
    assert len({(t.params["x"], t.params["kind"]) for t in study.trials}) == 5


def test_two_processes_share_one_study_and_create_exactly_n_trials(toy_app: Path) -> None:
    procs = [sweep(toy_app, "hydra.sweeper.n_trials=12", "hydra.sweeper.n_jobs=2", "sleep=0.5", wait=False)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = load(toy_app.parent / "out")
    assert len(study.trials) == 12 and all(t.state == TrialState.COMPLETE for t in study.trials)
    workers = [t.user_attrs[WORKER] for t in study.trials]
    assert len(set(workers)) == 2 and min(workers.count(w) for w in set(workers)) >= 2
    # Both processes share the seed, yet no trial repeats another's values (each is drawn with seed + number).
    assert len({(t.params["x"], t.params["kind"]) for t in study.trials}) == 12


def test_a_requeued_slurm_job_takes_up_the_trial_it_left_running(toy_app: Path) -> None:
    root = toy_app.parent / "out"
    study = optuna.create_study(study_name="toy", storage=open_storage(str(root / "search" / "toy" / "journal.log")))
    space = {"x": FloatDistribution(-4, 4), "kind": CategoricalDistribution(["a", "b"])}
    mine, theirs = study.ask(space), study.ask(space)
    mine.set_user_attr(WORKER, "slurm:77.0")
    theirs.set_user_attr(WORKER, "slurm:78.0")
    rc, out = sweep(toy_app, "hydra.sweeper.n_trials=2", env={"SLURM_JOB_ID": "77", "SLURM_PROCID": "0"})
    assert rc == 0 and "taking up trial(s) 0" in out, out
    trials = load(root).trials
    assert len(trials) == 2 and trials[0].state == TrialState.COMPLETE
    assert trials[0].value == pytest.approx(toy(**mine.params))
    assert trials[1].state == TrialState.RUNNING  # another job's trial: left to it


def test_a_trial_whose_process_was_killed_is_taken_up_by_the_next_search_on_its_host(toy_app: Path) -> None:
    root = toy_app.parent / "out"
    study = optuna.create_study(study_name="toy", storage=open_storage(str(root / "search" / "toy" / "journal.log")))
    space = {"x": FloatDistribution(-4, 4), "kind": CategoricalDistribution(["a", "b"])}
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process has now
    killed, live, in_slurm = study.ask(space), study.ask(space), study.ask(space)
    killed.set_user_attr(WORKER, f"{socket.gethostname()}:{gone.pid}")
    live.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")  # this test's process: still searching
    in_slurm.set_user_attr(WORKER, f"{socket.gethostname()}:{gone.pid}")
    in_slurm.set_user_attr(SLURM_JOB, "81")  # its run went to a Slurm job of its own, which may still be training
    rc, out = sweep(toy_app, "hydra.sweeper.n_trials=4")
    assert rc == 0 and f"trial 0 was left running by {socket.gethostname()}:{gone.pid}, which is gone" in out, out
    trials = load(root).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.RUNNING,
                                         TrialState.COMPLETE]  # the killed one, the two left alone, one new trial
    assert trials[0].value == pytest.approx(toy(**killed.params)) and trials[0].user_attrs[WORKER] != f"{socket.gethostname()}:{gone.pid}"


def test_a_study_refuses_a_search_with_other_fixed_overrides_and_continues_its_own(toy_app: Path) -> None:
    root = toy_app.parent / "out"
    assert sweep(toy_app, "hydra.sweeper.n_trials=2", "no_value_kind=c")[0] == 0
    recorded = load(root).user_attrs["search"]
    assert recorded["fixed"] == sorted([f"root={root}", "no_value_kind=c"]) and recorded["direction"] == "minimize"
    assert set(recorded["space"]) == {"x", "kind"}
    for other, shown in [(["no_value_kind=d"], "['no_value_kind=c'] there, ['no_value_kind=d'] here"),
                         (["no_value_kind=c", "sleep=0.01"], "[] there, ['sleep=0.01'] here"),
                         (["no_value_kind=c", "x=interval(0, 1)"], "x: "),
                         (["no_value_kind=c", "hydra.sweeper.direction=maximize"], "created to minimize")]:
        rc, out = sweep(toy_app, "hydra.sweeper.n_trials=3", *other)
        assert rc == 1 and shown in out and "hydra.sweeper.study_name" in out and "Traceback" not in out, out
    assert len(load(root).trials) == 2  # nothing ran
    rc, out = sweep(toy_app, "hydra.sweeper.n_trials=3", "no_value_kind=c", "hydra.sweeper.n_jobs=1")
    assert rc == 0, out
    assert [t.state for t in load(root).trials] == [TrialState.COMPLETE] * 3


def in_background(work) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)  # daemon: a lock that spins must not hang pytest
    thread.start()
    return thread


def test_a_stale_ask_lock_is_broken_and_a_live_one_is_waited_for(tmp_path: Path) -> None:
    target, lock = tmp_path / "ask", tmp_path / "ask.lock"
    held = []

    def ask(**kwargs) -> None:
        with exclusive(target, **kwargs):
            held.append(lock.is_symlink())

    # Left by a sweeper killed while asking, before ask existed (a dangling link), an hour ago.
    os.symlink(str(target), lock)
    os.utime(lock, (time.time() - 3600,) * 2, follow_symlinks=False)
    in_background(ask).join(timeout=10)
    assert held == [True] and target.is_file() and not lock.is_symlink()

    os.symlink(str(target), lock)  # held right now by another process: waited for, not broken
    thread = in_background(ask)
    thread.join(timeout=1)
    assert thread.is_alive() and held == [True]
    lock.unlink()  # released
    thread.join(timeout=5)
    assert held == [True, True] and not lock.is_symlink()

    # Its holder killed while we wait: broken once the lock has stayed unchanged for the grace period.
    os.symlink(str(target), lock)
    started = time.monotonic()
    in_background(lambda: ask(grace_period=3)).join(timeout=15)
    assert held == [True, True, True] and 3 <= time.monotonic() - started < 15


STUB_TRAINER = {"is_global_zero": True, "sanity_checking": False, "current_epoch": 0, "global_step": 1,
                "state": SimpleNamespace(fn=TrainerFn.FITTING), "strategy": SimpleNamespace(broadcast=lambda o, src: o)}


def reporter(storage: str, study: str, number: int, run_dir: Path) -> TrialReporter:
    """The run's reporter of trial ``number``, set up as in a training run of it."""
    report = TrialReporter(OmegaConf.create({"storage": storage, "study": study, "trial": number}), "val/acc", run_dir)
    report.setup(SimpleNamespace(**STUB_TRAINER), None, "fit")
    return report


def test_a_run_whose_trial_is_finished_already_goes_on_without_reporting(tmp_path: Path, caplog) -> None:
    storage = str(tmp_path / "journal.log")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    told = study.ask()
    study.tell(told, state=TrialState.FAIL)  # e.g. by the sweeper, when its launcher failed
    assert reporter(storage, "s", told.number, tmp_path / "a").trial is None
    assert RUN_DIR not in study.trials[told.number].user_attrs

    running = study.ask()
    report = reporter(storage, "s", running.number, tmp_path / "b")
    assert study.trials[running.number].user_attrs[MONITOR] == "val/acc"
    trainer = SimpleNamespace(**STUB_TRAINER, callback_metrics={"val/acc": 0.5}, should_stop=False)
    report.on_validation_end(trainer, None)
    study.tell(running, state=TrialState.FAIL)
    report.on_validation_end(trainer, None)
    report.on_validation_end(trainer, None)
    assert study.trials[running.number].intermediate_values == {0: 0.5} and not trainer.should_stop
    assert report.validations == 3 and report.pruned is None
    warnings = [r.getMessage() for r in caplog.records if "finished in its study already" in r.getMessage()]
    assert len(warnings) == 2 and f"search trial {running.number} " in warnings[1]


def search(tmp_path: Path, launch, **settings) -> Search:
    defaults = {"direction": "maximize", "study_name": "s", "dir": str(tmp_path / "search" / "s"), "storage": None,
                "n_trials": 4, "n_jobs": 4, "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
                "params": {"x": "interval(-4, 4)"}}
    return Search(Settings.from_config(**{**defaults, **settings}), launch=launch, validate=lambda batch: None)


def search_key(overrides, key: str) -> str:
    """The value of ``search.<key>`` that the sweeper gave a trial's run."""
    return next(o for o in overrides if o.startswith(f"search.{key}=")).split("=", 1)[1]


def test_when_the_launcher_fails_each_trial_is_told_what_its_run_folder_says(tmp_path: Path) -> None:
    folders = {0: ({"status": "completed"}, {"val": {"acc": 0.75, "loss": 0.1}}),
               1: ({"status": "pruned", "reason": "pruned by MedianPruner at validation 1"}, None),
               2: ({"status": "running"}, None),  # the lost job's run
               3: ({"status": "completed"}, {"val": {"loss": 0.1}})}  # no value of the monitor

    def launch(batch, first):
        for overrides in batch:
            number = int(search_key(overrides, "trial"))
            run = tmp_path / "runs" / str(number)
            reporter(search_key(overrides, "storage"), "s", number, run)  # the run records its folder and monitor on its trial
            status, metrics = folders[number]
            run.mkdir(parents=True)
            (run / "status.json").write_text(json.dumps(status))
            if metrics:
                (run / "metrics.json").write_text(json.dumps(metrics))
        raise RuntimeError("job 2 lost")

    best = search(tmp_path, launch).run([])
    trials = load(tmp_path, "s").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL]
    assert trials[0].value == 0.75 and best.number == 0
    assert trials[2].user_attrs["error"] == "RuntimeError: job 2 lost"
    assert trials[3].user_attrs["error"].startswith("ValueError: the run returned None, not a value")


def test_the_sweepers_study_has_the_configured_pruner_and_hyperband_resolves_auto_once(tmp_path: Path) -> None:
    def launch(batch, first):  # each run validates 3 times
        for overrides in batch:
            trial = reporter(search_key(overrides, "storage"), "s", int(search_key(overrides, "trial")),
                             tmp_path / "run").trial
            for step in range(3):
                trial.report(float(step), step)
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=1.0) for _ in batch]

    hyperband = {"name": "hyperband", "min_resource": 1, "max_resource": "auto", "reduction_factor": 3}
    runner = search(tmp_path, launch, n_trials=3, n_jobs=1, pruner=hyperband, sampler={"name": "tpe", "seed": 0})
    runner.run([])
    assert isinstance(runner.study.pruner, optuna.pruners.HyperbandPruner)  # the sampler's brackets: hyperband's
    study = load(tmp_path, "s")
    assert [t.user_attrs[PRUNER]["max_resource"] for t in study.trials] == ["auto", 3, 3]
    assert study.user_attrs[MAX_RESOURCE] == 3
    runner = search(tmp_path / "none", launch, n_trials=1, pruner={"name": "none"})
    runner.run([])
    assert isinstance(runner.study.pruner, optuna.pruners.NopPruner)  # not Optuna's default, MedianPruner


# With the tiny model: real runs, one run folder per trial.


def searched_overrides(tiny_bert: Path, data: Path, *extra: str) -> list[str]:
    return [o for o in tiny_overrides(tiny_bert, data, *extra) if not o.startswith(("optimizer.lr=", "task.data.batch_size="))]


def train(*args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_two_sweeps_share_one_study_and_the_best_trial_reruns(tiny_bert: Path, learnable_csv: Path,
                                                               tmp_path: Path) -> None:
    root = tmp_path / "runs"
    args = ["-m", "hparams_search=lr-batch", "hydra.sweeper.n_trials=4",
            *searched_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1", "logger=none"), f"paths.root_dir={root}"]
    procs = [train(*args, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]

    study = load(root, "csv-tiny-test-full-lr-batch")
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs[WORKER] for t in study.trials}) == 2  # both processes ran trials
    for trial in study.trials:  # each trial an ordinary, completed run folder with the trial's values
        run = Path(trial.user_attrs["run_dir"])
        assert run.parent == root / "csv-tiny-test-full"
        assert json.loads((run / "status.json").read_text())["status"] == "completed"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["search"]["trial"] == trial.number and config["run_id"] == run.name
        assert config["optimizer"]["lr"] == trial.params["optimizer.lr"]
        assert config["task"]["data"]["batch_size"] == trial.params["task.data.batch_size"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val"]["macro_f1"])  # the best checkpoint's task.monitor
        assert list(trial.intermediate_values) == [0]  # one validation, reported to the trial
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 4

    best = yaml.safe_load((root / "search" / "csv-tiny-test-full-lr-batch" / "best.yaml").read_text())
    assert best["value"] == study.best_value and best["run_dir"] == study.best_trial.user_attrs["run_dir"]
    assert "hparams_search=lr-batch" in best["overrides"] and best["command"].startswith("python ")
    # The best overrides compose the best trial's config: a fresh run of it (resume=never) gets its run_id and,
    # deterministic on the CPU, its value.
    rerun = train(*best["overrides"], "resume=never")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    fresh = [p for p in (root / "csv-tiny-test-full").iterdir() if p.name.startswith(f"{Path(best['run_dir']).name}-")]
    assert len(fresh) == 1
    assert json.loads((fresh[0] / "metrics.json").read_text())["val"]["macro_f1"] == pytest.approx(best["value"], rel=1e-5)


@pytest.mark.slow
def test_pruning_stops_a_trial_whose_validation_curve_falls_behind(tiny_bert: Path, learnable_csv: Path,
                                                                   tmp_path: Path) -> None:
    """Two trials queued in the study: the usual learning rate, then one too small to learn anything. With the
    first trial finished, the median pruner stops the second at its first validation (its loss is worse)."""
    root = tmp_path / "runs"
    study = optuna.create_study(study_name="prune", direction="minimize",
                                storage=open_storage(str(root / "search" / "prune" / "journal.log")))
    for lr in (3e-3, 1e-7):
        study.enqueue_trial({"optimizer.lr": lr, "task.data.batch_size": 16, "scheduler.warmup_ratio": 0.0})
    proc = train("-m", "hparams_search=lr-batch", "hydra.sweeper.study_name=prune", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0",
                 "task.monitor=val/loss", "task.monitor_mode=min",
                 *searched_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=3"), f"paths.root_dir={root}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    good, bad = load(root, "prune").trials
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [0, 1, 2]  # the epochs
    assert bad.state == TrialState.PRUNED and sorted(bad.intermediate_values) == [0]
    assert bad.intermediate_values[0] > good.intermediate_values[0]  # behind the median (the only finished trial)
    run = Path(bad.user_attrs["run_dir"])
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "pruned" and "pruned by MedianPruner at validation 1 (epoch 0" in status["reason"]
    epochs = pd.read_csv(run / "logs" / "metrics.csv")["epoch"].dropna()
    assert epochs.max() == 0  # stopped after its first epoch of 3
    assert not (run / "metrics.json").exists() and not (run / "model").exists()  # neither tested nor exported
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = yaml.safe_load((root / "search" / "prune" / "best.yaml").read_text())
    assert best["trial"] == 0 and best["trials"]["pruned"] == 1 and best["direction"] == "minimize"
