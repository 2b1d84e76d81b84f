"""On a real two-node Slurm cluster (slurm/local-cluster/start.sh): multi-node DDP through the project's
sbatch template, preemption + requeue + resume (DDP on one node, FSDP2 across both), the time-limit signal
of a short job (requeued, status.json written first), the preflight reading the job's own settings, a sweep
through the submitit launcher, and Optuna searches: two Slurm jobs sharing one study (slurm/search.sbatch), and
trials as Slurm jobs (hydra/launcher=slurm).

Skipped unless ``SLURM_CONF`` points at a running cluster; with ``TUNELAB_REQUIRE_SLURM=1`` (``.ci/run``, which
starts the cluster) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import tiny_overrides
from tunelab.distributed import parse_job

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm


def _cluster_up() -> bool:
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0 and any(state in proc.stdout for state in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    if not _cluster_up():
        reason = ("no running Slurm cluster (SLURM_CONF unset or `sinfo` shows no usable node): run "
                  "slurm/local-cluster/start.sh and export SLURM_CONF=/tmp/tunelab-slurm/slurm.conf MASTER_ADDR=127.0.0.1")
        if os.environ.get("TUNELAB_REQUIRE_SLURM") == "1":  # CI (.ci/run): a cluster that did not come up is a failure
            pytest.fail(f"TUNELAB_REQUIRE_SLURM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def sbatch(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return proc.stdout.strip().split(";")[0]


def job_info(job: str, env: dict[str, str]) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30, check=False)
    return parse_job(proc.stdout)


def wait_done(job: str, env: dict[str, str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(job, env)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(2)
    subprocess.run(["scancel", job], env=env, check=False)
    raise AssertionError(f"job {job} did not finish in {timeout} s: {job_info(job, env)}")


def only_run(root: Path) -> Path:
    runs = [p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def test_two_node_ddp_through_the_sbatch_template(slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path,
                                                  tmp_path: Path) -> None:
    root = tmp_path / "runs"
    job = sbatch(slurm_env, "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
                 f"--output={tmp_path}/%j.out", "slurm/train.sbatch",
                 *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=2", "progress=plain"),
                 "trainer=ddp", f"paths.root_dir={root}")
    info = wait_done(job, slurm_env, timeout=600)
    out = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", out[-4000:]

    run = only_run(root)  # both ranks derived the same folder from the config
    metrics = json.loads((run / "metrics.json").read_text())
    dist = metrics["distributed"]
    assert dist["world_size"] == 2 and dist["num_nodes"] == 2 and dist["strategy"] == "DDPStrategy"
    assert sorted(r["node"] for r in dist["ranks"]) == ["node1", "node2"]
    # Each rank trained on its own half of the examples, every epoch.
    assert [r["train_samples"] for r in dist["ranks"]] == [2 * metrics["data"]["train"] // 2] * 2
    # One set of results: written once, by rank 0.
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    epochs = pd.read_csv(run / "logs" / "metrics.csv")["train/loss_epoch"].dropna()
    assert len(epochs) == 2
    assert out.count("test: loss") == 1 and "run folder:" in out
    assert (run / "model" / "config.json").is_file() and not list(run.rglob("*.tmp"))
    assert metrics["test"]["accuracy"] > 0.5


def test_preempted_job_resumes_its_run_and_matches_an_uninterrupted_one(
        slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=4", "task.data.batch_size=4",
                                 "progress=plain"), f"paths.root_dir={tmp_path / 'runs'}"]
    common = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
              f"--output={tmp_path}/%j.out", "slurm/train.sbatch"]
    reference = sbatch(slurm_env, *common, *overrides, "run_id=uninterrupted")
    job = sbatch(slurm_env, *common, *overrides, "run_id=preempted")
    run = tmp_path / "runs" / "csv-tiny-test-full" / "preempted"

    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").exists():  # one epoch done: now preempt it mid-training
        assert time.monotonic() < deadline, (tmp_path / f"{job}.out").read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(1.5)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_env, check=True, timeout=30)

    info = wait_done(job, slurm_env, timeout=600)
    wait_done(reference, slurm_env, timeout=300)
    out = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", out[-4000:]
    # The signal handler only set a flag: the checkpoint was taken at the next batch start, then the job requeued.
    saved = re.search(r"requeue signal: saved .*hpc_ckpt_1\.ckpt at step (\d+)", out)
    assert saved and "Requeued Slurm job" in out, out[-4000:]
    assert re.search(rf"resuming {re.escape(str(run))} from .*hpc_ckpt_1\.ckpt", out), out[-4000:]
    assert out.count("attempt 1 ") == 1 and out.count("attempt 2 ") == 1

    assert sorted(p.name for p in run.parent.iterdir()) == ["preempted", "uninterrupted"]  # no new folder
    resumed = json.loads((run / "metrics.json").read_text())
    straight = json.loads((run.parent / "uninterrupted" / "metrics.json").read_text())
    assert resumed["train"]["steps"] == straight["train"]["steps"]
    assert int(saved.group(1)) > straight["train"]["steps"] // 4  # preempted after epoch 1, before the end
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    # The final weights (not only the best checkpoint's metrics, which may predate the preemption) agree.
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    expected = torch.load(run.parent / "uninterrupted" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["val"] == pytest.approx(straight["val"], rel=1e-6, abs=1e-7)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-6, abs=1e-7)
    assert not list(run.glob("hpc_ckpt_*.ckpt"))


def test_two_node_fsdp2_job_requeued_mid_epoch_resumes_from_its_shards_and_matches_an_uninterrupted_one(
        slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    """trainer=fsdp across the two nodes (one rank each, every weight split between them): USR1 mid-epoch,
    the requeue checkpoint is a sharded folder written by both nodes, the requeued job resumes from it in the
    same run folder, and ends with the weights, per-step losses and metrics of an uninterrupted 2-node job."""
    overrides = [*tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=3", "task.data.batch_size=4",
                                 "progress=plain"), "trainer=fsdp", f"paths.root_dir={tmp_path / 'runs'}"]
    common = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
              f"--output={tmp_path}/%j.out", "slurm/train.sbatch"]
    job = sbatch(slurm_env, *common, *overrides, "run_id=preempted")
    run = tmp_path / "runs" / "csv-tiny-test-full" / "preempted"
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt" / "meta.pt").exists():  # epoch 1 saved: now preempt it mid-epoch
        assert time.monotonic() < deadline, (tmp_path / f"{job}.out").read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(1.0)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_env, check=True, timeout=30)
    info = wait_done(job, slurm_env, timeout=600)
    out = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", out[-4000:]
    saved = re.search(r"requeue signal: saved .*hpc_ckpt_1\.ckpt at step (\d+)", out)
    assert saved and re.search(rf"resuming {re.escape(str(run))} from .*hpc_ckpt_1\.ckpt", out), out[-4000:]
    reference = sbatch(slurm_env, *common, *overrides, "run_id=uninterrupted")  # the nodes are free again
    info = wait_done(reference, slurm_env, timeout=600)
    assert info["JobState"] == "COMPLETED", (tmp_path / f"{reference}.out").read_text()[-4000:]

    resumed = json.loads((run / "metrics.json").read_text())
    straight = json.loads((run.parent / "uninterrupted" / "metrics.json").read_text())
    dist = resumed["distributed"]
    assert dist["strategy"] == "FSDP2Strategy" and dist["world_size"] == 2 and dist["num_nodes"] == 2
    assert sorted(r["node"] for r in dist["ranks"]) == ["node1", "node2"]
    assert sum(r["local_params"] for r in dist["ranks"]) == resumed["params"]["total"]  # each node holds half
    steps_per_epoch = straight["train"]["steps"] // 3
    assert steps_per_epoch < int(saved.group(1)) < 2 * steps_per_epoch  # mid-epoch 2
    assert resumed["train"]["steps"] == straight["train"]["steps"]
    assert json.loads((run / "status.json").read_text())["status"] == "completed" and not list(run.glob("hpc_ckpt_*"))
    last = run / "checkpoints" / "last.ckpt"
    assert {p.name for p in last.iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"}
    final = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]  # gathered, full
    expected = torch.load(run.parent / "uninterrupted" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["val"] == pytest.approx(straight["val"], rel=1e-5) and resumed["test"] == pytest.approx(straight["test"], rel=1e-5)
    losses = [pd.read_csv(r / "logs" / "metrics.csv").dropna(subset=["train/loss_step"]) for r in (run, run.parent / "uninterrupted")]
    assert not losses[0]["step"].duplicated().any()
    assert losses[0]["train/loss_step"].tolist() == pytest.approx(losses[1]["train/loss_step"].tolist(), rel=1e-5)

    # HSDP across the nodes (trainer.strategy.hybrid_shard=true: 2 replicas x 1 shard, gradients all-reduced
    # between nodes): the same training, so the same weights, up to the reduction order. The attention key
    # biases are the exception: softmax ignores them, so their gradient is float noise (all-reduce and
    # reduce-scatter add it up differently) that Adam turns into steps; they stay within 1e-4 of each other.
    hybrid = sbatch(slurm_env, *common, *overrides, "trainer.strategy.hybrid_shard=true", "run_id=hybrid")
    info = wait_done(hybrid, slurm_env, timeout=600)
    assert info["JobState"] == "COMPLETED", (tmp_path / f"{hybrid}.out").read_text()[-4000:]
    hsdp = json.loads((run.parent / "hybrid" / "metrics.json").read_text())
    assert hsdp["distributed"]["mesh"] == {"replicate": 2, "shard": 1}
    assert [r["local_params"] for r in hsdp["distributed"]["ranks"]] == [hsdp["params"]["total"]] * 2  # replicas
    replicated = torch.load(run.parent / "hybrid" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    for name, tensor in expected.items():
        tol = {"rtol": 0, "atol": 1e-4} if name.endswith("attention.self.key.bias") else {"rtol": 1e-5, "atol": 1e-6}
        torch.testing.assert_close(replicated[name], tensor, msg=name, **tol)
    assert hsdp["test"] == pytest.approx(straight["test"], rel=1e-4)


SHORT_JOB = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]


def test_time_limit_signal_of_a_short_job_requeues_it_and_says_so_first(
        slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    """`--time=2` against the template's `--signal=SIGUSR1@90`: Slurm signals ~30 s in, while the job starts up
    or trains (before: the signal could come before the handler and kill the job). The preflight warns about
    the time limit; the run checkpoints at a batch start, writes status.json `requeued` and then requeues. The
    test cancels the requeued job instead of waiting for its restart (the resume is the test above)."""
    overrides = [*tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=300", "progress=plain"),
                 f"paths.root_dir={tmp_path / 'runs'}", "run_id=short"]
    job = sbatch(slurm_env, *SHORT_JOB, "--time=2", f"--output={tmp_path}/%j.out", "slurm/train.sbatch", *overrides)
    run = tmp_path / "runs" / "csv-tiny-test-full" / "short"
    deadline = time.monotonic() + 240
    try:
        while (info := job_info(job, slurm_env)).get("Restarts") != "1":
            assert info.get("JobState") not in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"), info
            assert time.monotonic() < deadline, info
            time.sleep(1)
    finally:
        subprocess.run(["scancel", job], env=slurm_env, check=False, timeout=30)
    out = (tmp_path / f"{job}.out").read_text()
    assert "the job's time limit (120 s) is not above the 90 s lead of `--signal=SIGUSR1@90`" in out, out[-4000:]
    assert re.search(r"requeue signal: saved .*hpc_ckpt_1\.ckpt at step \d+", out), out[-4000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "requeued" and "hpc_ckpt_1.ckpt" in status["reason"], status
    assert (run / "hpc_ckpt_1.ckpt").is_file()


def test_preflight_reads_the_jobs_own_settings(slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path,
                                               tmp_path: Path) -> None:
    """`sbatch --no-requeue` overrides the template's `#SBATCH --requeue`: the preflight reads Requeue=0 from
    `scontrol show job` (before: it read only the script, and said nothing). `resume=must` with no checkpoint
    then stops the run right after the preflight."""
    job = sbatch(slurm_env, *SHORT_JOB, "--time=3", "--no-requeue", "--signal=B:USR2@10", f"--output={tmp_path}/%j.out",
                 "slurm/train.sbatch", *tiny_overrides(tiny_bert, learnable_csv), f"paths.root_dir={tmp_path / 'runs'}",
                 "resume=must")
    info = wait_done(job, slurm_env, timeout=300)
    out = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "FAILED" and "resume=must" in out, out[-4000:]
    assert info["Requeue"] == "0"
    assert "Slurm preflight: the job is not requeueable (Slurm shows Requeue=0: `--no-requeue`" in out, out[-4000:]


def test_sweep_through_the_submitit_launcher(slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path,
                                            tmp_path: Path) -> None:
    root = tmp_path / "runs"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15",
           *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1"),
           "seed=1,2", "optimizer.lr=1e-3,3e-3", f"paths.root_dir={root}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    runs = sorted(p for p in (root / "csv-tiny-test-full").iterdir() if p.is_dir())
    assert len(runs) == 4
    combos = set()
    for run in runs:
        assert json.loads((run / "status.json").read_text())["status"] == "completed", run
        metrics = json.loads((run / "metrics.json").read_text())
        env = json.loads((run / "environment.json").read_text())
        assert env["slurm_job_id"], run  # ran as a Slurm job
        config = yaml.safe_load((run / "config.yaml").read_text())
        combos.add((metrics["seed"], float(config["optimizer"]["lr"])))
        assert run.name == config["run_id"]  # the folder is the run's identity
        assert (run / "model" / "config.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert combos == {(1, 1e-3), (1, 3e-3), (2, 1e-3), (2, 3e-3)}


def search_study(root: Path, name: str) -> list:
    import optuna

    from tunelab.search.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(root / "search" / name / "journal.log"))).trials


def test_two_slurm_jobs_share_one_optuna_study(slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path,
                                               tmp_path: Path) -> None:
    """slurm/search.sbatch as a 2-task array: each job runs the same search (trials in the job, one after another),
    and together they run the study's 4 trials, each a run folder trained in the job that asked for it."""
    root = tmp_path / "runs"
    overrides = [o for o in tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1", "logger=none")
                 if not o.startswith(("optimizer.lr=", "task.data.batch_size="))]  # searched
    array = sbatch(slurm_env, "--array=0-1", *SHORT_JOB, "--time=15", f"--output={tmp_path}/%A_%a.out",
                   "slurm/search.sbatch", "hparams_search=lr-batch", "hydra.sweeper.n_trials=4", *overrides,
                   f"paths.root_dir={root}")
    jobs = {task: wait_done(f"{array}_{task}", slurm_env, timeout=600) for task in (0, 1)}
    for task, info in jobs.items():
        assert info["JobState"] == "COMPLETED", (tmp_path / f"{array}_{task}.out").read_text()[-4000:]
    job_ids = {info["JobId"] for info in jobs.values()}
    assert len(job_ids) == 2

    trials = search_study(root, "csv-tiny-test-full-lr-batch")
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    # Asked by both jobs, each trial trained in the job that asked for it.
    assert {t.user_attrs["worker"] for t in trials} == {f"slurm:{job}.0" for job in job_ids}
    assert all(t.user_attrs["worker"] == f"slurm:{t.user_attrs['slurm_job_id']}.0" for t in trials)
    for trial in trials:
        run = Path(trial.user_attrs["run_dir"])
        assert json.loads((run / "status.json").read_text())["status"] == "completed", run
        assert json.loads((run / "environment.json").read_text())["slurm_job_id"] == trial.user_attrs["slurm_job_id"]
    best = yaml.safe_load((root / "search" / "csv-tiny-test-full-lr-batch" / "best.yaml").read_text())
    assert best["trials"]["complete"] == 4 and best["value"] == max(t.value for t in trials)


def test_optuna_search_through_the_submitit_launcher(slurm_env: dict[str, str], tiny_bert: Path, learnable_csv: Path,
                                                    tmp_path: Path) -> None:
    """hydra/launcher=slurm: one process (here, outside Slurm) launches the trials as Slurm jobs, 2 at a time."""
    root = tmp_path / "runs"
    overrides = [o for o in tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1")
                 if not o.startswith(("optimizer.lr=", "task.data.batch_size="))]  # searched
    cmd = [sys.executable, "train.py", "-m", "hparams_search=lr-batch", "hydra/launcher=slurm",
           "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *overrides, f"paths.root_dir={root}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    trials = search_study(root, "csv-tiny-test-full-lr-batch")
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["slurm_job_id"] for t in trials}) == 2  # each trial its own Slurm job
    for trial in trials:  # and an ordinary run folder
        run = Path(trial.user_attrs["run_dir"])
        assert json.loads((run / "status.json").read_text())["status"] == "completed", run
        assert json.loads((run / "environment.json").read_text())["slurm_job_id"] == trial.user_attrs["slurm_job_id"]
        assert yaml.safe_load((run / "config.yaml").read_text())["search"]["trial"] == trial.number
    best = yaml.safe_load((root / "search" / "csv-tiny-test-full-lr-batch" / "best.yaml").read_text())
    assert set(best["params"]) == {"optimizer.lr", "task.data.batch_size", "scheduler.warmup_ratio"}
