"""Slurm's requeue signal at any moment of a run, without Slurm: a faked Slurm environment (one `srun` task)
and a fake `scontrol` on PATH that records each `scontrol requeue` with the run's status.json at that moment.

- ``status.json`` says ``requeued`` before ``scontrol requeue`` runs (Slurm ends the job's processes as soon as
  it accepts the requeue, so whatever the run writes afterwards is lost);
- SIGUSR1 before training (imports, data loading, trainer set-up) is honoured at the first batch: the run
  is requeued from a step-0 checkpoint, not killed by the signal's default action;
- SIGUSR1 after training (test, export) does not kill the run: it completes and is not requeued.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tunelab import slurm_signal
from tunelab.requeue import Requeued, requeue_job
from tunelab.train import run

ROOT = Path(__file__).resolve().parents[1]
RECORDED_JOB = ROOT / "tests" / "slurm" / "scontrol" / "array-task-1day.txt"  # Requeue=1, TimeLimit=1 day
SCRIPT = "#!/bin/bash\n#SBATCH --signal=SIGUSR1@90\n#SBATCH --requeue\nsrun python train.py\n"
JOB_ID = "4242"
RUN_NAME = "csv-tiny-test-full"  # task=csv, model.name=tiny-test, tuning=full (tiny_overrides)


class SignalIn(L.Callback):
    """Sends this process SIGUSR1, as Slurm may at any moment: in ``setup`` of fit (before the other callbacks'
    setup, ResumeCallback's included) or at the start of testing (after training)."""

    def __init__(self, hook: str):
        self.hook = hook

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.hook == "setup" and stage == "fit":
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.hook == "test":
            os.kill(os.getpid(), signal.SIGUSR1)


class FakeSlurm:
    """A one-task `srun` step of job 4242 (environment) and an `scontrol` that replays a recorded job, prints a
    batch script with `--signal=SIGUSR1@90 --requeue`, and records each `requeue <job>` with status.json then."""

    def __init__(self, tmp_path: Path, run_dir: Path):
        self.record = tmp_path / "scontrol-requeue"
        self.record.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (tmp_path / "script.sh").write_text(SCRIPT)
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(f"""#!/bin/sh
case "$1" in
  requeue) n=$(ls "{self.record}" | wc -l)
           {{ printf '{{"job": "%s", "status": ' "$2"; cat "{run_dir}/status.json"; echo '}}'; }} > "{self.record}/$n.json" ;;
  show) cat "{RECORDED_JOB}" ;;
  write) cat "{tmp_path / 'script.sh'}" ;;
  *) exit 1 ;;
esac
""")
        scontrol.chmod(0o755)
        self.env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": JOB_ID,
                    "SLURM_JOB_NAME": "tunelab", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
                    "SLURM_NNODES": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "1",
                    "SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                    "SLURM_NODELIST": "node1", "MASTER_ADDR": "127.0.0.1"}

    def requeues(self) -> list[tuple[str, dict]]:
        """(`scontrol requeue` argument, status.json when it ran), in order."""
        calls = [json.loads(p.read_text()) for p in sorted(self.record.iterdir(), key=lambda p: int(p.stem))]
        return [(call["job"], call["status"]) for call in calls]


def start_train(slurm: FakeSlurm, *overrides: str) -> subprocess.Popen[str]:
    """``python train.py ...`` as an srun task of the fake job."""
    return subprocess.Popen([sys.executable, "train.py", *overrides], cwd=ROOT, env={**os.environ, **slurm.env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode} (-{int(signal.SIGUSR1)}: killed by SIGUSR1)\n{out[-4000:]}"
    return out


def test_status_says_requeued_when_scontrol_requeue_runs(tiny_bert: Path, learnable_csv: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the signal mid-training (step 5); the fake `scontrol requeue` finds status.json already
    `requeued` (before: still `running`, and under Slurm the process was gone before it wrote more)."""
    out = tmp_path / "run"
    slurm = FakeSlurm(tmp_path, out)
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Requeued, match=r"hpc_ckpt_1\.ckpt at step 6"):
        run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv),
                          "+callbacks.signal._target_=tests.test_run_identity.SignalAt", "+callbacks.signal.step=5"))
    [(job, status)] = slurm.requeues()
    assert job == JOB_ID
    assert status["status"] == "requeued" and "hpc_ckpt_1.ckpt at step 6" in status["reason"]
    assert not slurm_signal.received()  # honoured: a later run in this process does not requeue again


def test_signal_before_training_requeues_at_the_first_batch_and_resumes(tiny_bert: Path, learnable_csv: Path,
                                                                         tmp_path: Path) -> None:
    """SIGUSR1 in the trainer's setup, before ResumeCallback's (before: the default action killed the job)."""
    overrides = tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1")
    run_dir = tmp_path / "runs" / RUN_NAME / "early"
    slurm = FakeSlurm(tmp_path, run_dir)
    out = finish(start_train(slurm, *overrides, f"paths.root_dir={tmp_path / 'runs'}", "run_id=early",
                             "+callbacks.signal._target_=tests.test_requeue.SignalIn", "+callbacks.signal.hook=setup"))
    assert "requeue signal: saved" in out and "hpc_ckpt_1.ckpt at step 0" in out, out[-4000:]
    [(job, status)] = slurm.requeues()
    assert job == JOB_ID and status["status"] == "requeued"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "requeued"
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 0

    # The requeued job (the same command, here outside Slurm) resumes from the step-0 checkpoint to the
    # weights and metrics of an uninterrupted run.
    resumed = run(compose_train(run_dir, *overrides))
    uninterrupted = run(compose_train(tmp_path / "uninterrupted", *overrides))
    assert resumed["train"]["steps"] == uninterrupted["train"]["steps"] > 0
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    expected = torch.load(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["test"] == pytest.approx(uninterrupted["test"], rel=1e-5)


def test_signal_during_data_loading_requeues_instead_of_killing(tiny_bert: Path, learnable_csv: Path,
                                                                tmp_path: Path) -> None:
    """Sent from outside as soon as the run folder's status.json exists (the data is loaded next)."""
    run_dir = tmp_path / "runs" / RUN_NAME / "loading"
    slurm = FakeSlurm(tmp_path, run_dir)
    proc = start_train(slurm, *tiny_overrides(tiny_bert, learnable_csv), f"paths.root_dir={tmp_path / 'runs'}",
                       "run_id=loading")
    deadline = time.monotonic() + 240
    while not (run_dir / "status.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out = finish(proc)
    assert "requeue signal: saved" in out, out[-4000:]
    [(job, status)] = slurm.requeues()
    assert job == JOB_ID and status["status"] == "requeued"


def test_signal_after_training_lets_the_run_complete(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    """SIGUSR1 while testing (before: ResumeCallback had put the default action back after fit: killed)."""
    run_dir = tmp_path / "runs" / RUN_NAME / "late"
    slurm = FakeSlurm(tmp_path, run_dir)
    out = finish(start_train(slurm, *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1"),
                             f"paths.root_dir={tmp_path / 'runs'}", "run_id=late",
                             "+callbacks.signal._target_=tests.test_requeue.SignalIn", "+callbacks.signal.hook=test"))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / "metrics.json").is_file() and (run_dir / "model" / "config.json").is_file()
    assert slurm.requeues() == [] and not list(run_dir.glob("hpc_ckpt_*"))
    assert "requeue signal (SIGUSR1) came when no training batch followed" in out, out[-4000:]


@pytest.mark.parametrize(("exit_code", "accepted"), [(0, True), (1, False)])
def test_requeue_job_says_whether_slurm_accepted_the_requeue(exit_code: int, accepted: bool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """An array task is requeued as `<array job>_<task>`; a refused requeue (a job without --requeue) is
    reported, and the run's message then says to resubmit."""
    calls = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\necho "Requeue of job not allowed" >&2\nexit {exit_code}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert requeue_job() is accepted
    assert calls.read_text() == "requeue 10_2\n"
    assert ("failed (Requeue of job not allowed): is the job submitted with --requeue?" in caplog.text) is not accepted


@pytest.mark.parametrize("env", [
    {},
    {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "tunelab"},
    {"SLURM_NTASKS": "1"},
    {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "interactive"},
    {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash"},
    {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "tunelab"},  # an allocation, no srun step
])
def test_slurm_managed_is_lightnings_test_without_importing_lightning(env: dict[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert slurm_signal.slurm_managed() == SLURMEnvironment.detect()
    if not env.get("SLURM_NTASKS"):
        assert slurm_signal.catch_if_slurm() is False


def test_the_signal_module_is_light() -> None:
    """cli.train catches the signal before the heavy imports: the module must not pull them in."""
    code = "import sys, tunelab.slurm_signal; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert proc.stdout.strip() == "[]"
