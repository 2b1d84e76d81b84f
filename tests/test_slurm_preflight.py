"""The Slurm preflight check (tunelab.distributed.preflight) on faked Slurm environments: each layout
mismatch stops the run with a message naming the sbatch line or config key to change. And the start-up
check that FSDP is not tried without GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import compose_train
from tunelab.distributed import check_strategy, preflight
from tunelab.errors import ConfigError
from tunelab.train import run

GOOD_SCRIPT = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
srun python train.py trainer=ddp
"""


def slurm_env(**extra: str) -> dict[str, str]:
    """A task of `srun` in a 2-node batch job with 2 tasks per node."""
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "tunelab", "SLURM_NNODES": "2", "SLURM_NTASKS": "4",
           "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "2",
           "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
    env.update(extra)
    return {k: v for k, v in env.items() if v != "-"}


TRAINER = {"devices": 2, "num_nodes": 2}


def test_a_matching_job_passes_without_warnings() -> None:
    assert preflight(TRAINER, slurm_env(), GOOD_SCRIPT) == []


def test_outside_slurm_and_in_interactive_allocations_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preflight({"devices": 8, "num_nodes": 4}, {}, "") == []
    assert preflight({"devices": 8, "num_nodes": 4}, slurm_env(SLURM_JOB_NAME="interactive", SLURM_STEP_ID="-"), "") == []
    # The real environment is read when none is given: here no SLURM_* at all.
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    assert preflight({"devices": 8, "num_nodes": 4}) == []


def test_not_launched_through_srun(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"not launched through srun: start training with `srun python train.py"):
        preflight(TRAINER, slurm_env(SLURM_STEP_ID="-"), GOOD_SCRIPT)
    # The same through the real environment (monkeypatched), as train.py calls it.
    for key, value in slurm_env(SLURM_STEP_ID="-").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    with pytest.raises(ConfigError, match="not launched through srun"):
        preflight(TRAINER, script=GOOD_SCRIPT)


def test_tasks_per_node_must_equal_devices() -> None:
    with pytest.raises(ConfigError) as err:
        preflight({"devices": 4, "num_nodes": 2}, slurm_env(), GOOD_SCRIPT)
    message = str(err.value)
    assert "trainer.devices=4 but Slurm starts 2 task(s) per node" in message
    assert "`#SBATCH --ntasks-per-node=4`" in message and "trainer.devices=2" in message


def test_uneven_tasks_without_ntasks_per_node() -> None:
    env = slurm_env(SLURM_NTASKS_PER_NODE="-", SLURM_STEP_TASKS_PER_NODE="3,1")
    with pytest.raises(ConfigError, match=r"unevenly over the nodes.*`#SBATCH --ntasks-per-node=<devices per node>`"):
        preflight(TRAINER, env, GOOD_SCRIPT)


def test_nodes_must_equal_num_nodes() -> None:
    with pytest.raises(ConfigError) as err:
        preflight({"devices": 2, "num_nodes": 1}, slurm_env(), GOOD_SCRIPT)
    message = str(err.value)
    assert "trainer.num_nodes=1 but the job runs on 2 node(s)" in message
    assert "`#SBATCH --nodes=1`" in message and "trainer.num_nodes=2" in message


def test_all_layout_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        preflight({"devices": 1, "num_nodes": 1}, slurm_env(), GOOD_SCRIPT)
    assert "--ntasks-per-node=1" in str(err.value) and "--nodes=1" in str(err.value)


@pytest.mark.parametrize(("line", "expected"), [
    (None, "no signal before the time limit or preemption: add `#SBATCH --signal=SIGUSR1@90`"),
    ("#SBATCH --signal=B:SIGUSR1@90", "signals only the batch shell"),
    ("#SBATCH --signal=SIGTERM@90", "sends SIGTERM, but Lightning requeues on SIGUSR1"),
    ("#SBATCH --signal=USR1@10", "leaves 10 s to save a checkpoint"),
    ("#SBATCH --signal=???", "cannot read `--signal=???`"),
])
def test_missing_or_odd_signal_is_a_warning(line: str | None, expected: str) -> None:
    script = "\n".join(x for x in GOOD_SCRIPT.splitlines() if not x.startswith("#SBATCH --signal"))
    if line:
        script = script.replace("#SBATCH --requeue", f"{line}\n#SBATCH --requeue")
    warnings = preflight(TRAINER, slurm_env(), script)
    assert len(warnings) == 1 and expected in warnings[0], warnings
    assert "#SBATCH --signal=SIGUSR1@90" in warnings[0]


def test_signal_given_on_the_sbatch_command_line_counts() -> None:
    script = "\n".join(x for x in GOOD_SCRIPT.splitlines() if not x.startswith("#SBATCH --signal"))
    assert preflight(TRAINER, slurm_env(SBATCH_SIGNAL="USR1@120"), script) == []


def test_a_job_that_cannot_be_requeued_is_a_warning() -> None:
    script = GOOD_SCRIPT.replace("#SBATCH --requeue\n", "")
    warnings = preflight(TRAINER, slurm_env(), script)
    assert len(warnings) == 1 and "add `#SBATCH --requeue`" in warnings[0]


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_fsdp_without_gpus_stops_at_start_up(tmp_path: Path, accelerator: str) -> None:
    cfg = compose_train(tmp_path / "run", "trainer=fsdp", f"trainer.accelerator={accelerator}", "trainer.devices=2")
    with pytest.raises(ConfigError, match=r"trainer=fsdp needs GPUs \(CUDA, NCCL\).*trainer=ddp"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # before anything is written or loaded
    check_strategy(compose_train(tmp_path / "run", "trainer=fsdp").trainer)  # the preset itself asks for GPUs
    check_strategy(compose_train(tmp_path / "run", "trainer=ddp", "trainer.accelerator=cpu").trainer)
