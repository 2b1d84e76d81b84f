"""The Slurm preflight check (tunelab.distributed.preflight) on faked Slurm environments and on `scontrol show job`
output recorded on the local cluster (tests/slurm/scontrol/): each layout mismatch stops the run with a message
naming the sbatch line or config key to change; a job that cannot requeue in time is warned about. And the
start-up check that FSDP is not tried without GPUs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import compose_train
from tunelab.distributed import check_strategy, parse_job, preflight, time_limit_s
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
RECORDED = Path(__file__).parent / "slurm" / "scontrol"


def recorded_job(name: str) -> dict[str, str]:
    """`scontrol show job` of a real job on slurm/local-cluster (Slurm 22.05), parsed."""
    return parse_job((RECORDED / f"{name}.txt").read_text())


DAY_JOB = recorded_job("array-task-1day")  # Requeue=1, TimeLimit=1-00:00:00


def test_a_matching_job_passes_without_warnings() -> None:
    assert preflight(TRAINER, slurm_env(), GOOD_SCRIPT, DAY_JOB) == []


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
    ("#SBATCH --signal=SIGTERM@90", "sends SIGTERM, but the run requeues on SIGUSR1"),
    ("#SBATCH --signal=USR1@10", "leaves 10 s to save a checkpoint"),
    ("#SBATCH --signal=???", "cannot read `--signal=???`"),
])
def test_missing_or_odd_signal_is_a_warning(line: str | None, expected: str) -> None:
    script = "\n".join(x for x in GOOD_SCRIPT.splitlines() if not x.startswith("#SBATCH --signal"))
    if line:
        script = script.replace("#SBATCH --requeue", f"{line}\n#SBATCH --requeue")
    warnings = preflight(TRAINER, slurm_env(), script, DAY_JOB)
    assert len(warnings) == 1 and expected in warnings[0], warnings
    assert "#SBATCH --signal=SIGUSR1@90" in warnings[0]


def test_a_missing_signal_says_that_one_on_the_sbatch_command_line_is_not_visible() -> None:
    """Slurm shows a job its --signal nowhere (not in `scontrol show job`, not in its environment)."""
    script = "\n".join(x for x in GOOD_SCRIPT.splitlines() if not x.startswith("#SBATCH --signal"))
    assert "Signal" not in "".join(recorded_job("no-requeue-3min"))  # submitted with --signal=B:USR2@10
    [warning] = preflight(TRAINER, slurm_env(), script, DAY_JOB)
    assert "a `--signal` given on the sbatch command line is not visible to the job" in warning


def test_signal_set_through_SBATCH_SIGNAL_at_submission_counts() -> None:
    script = "\n".join(x for x in GOOD_SCRIPT.splitlines() if not x.startswith("#SBATCH --signal"))
    assert preflight(TRAINER, slurm_env(SBATCH_SIGNAL="USR1@120"), script, DAY_JOB) == []


def test_a_script_without_requeue_is_a_warning_when_slurm_does_not_show_the_job() -> None:
    script = GOOD_SCRIPT.replace("#SBATCH --requeue\n", "")
    warnings = preflight(TRAINER, slurm_env(), script, job={})
    assert len(warnings) == 1 and "no `#SBATCH --requeue` in the script" in warnings[0]
    assert "add `#SBATCH --requeue`" in warnings[0]


def test_the_jobs_own_requeue_flag_overrides_the_script() -> None:
    """`sbatch --no-requeue` on the command line beats the script's `#SBATCH --requeue` (recorded: Requeue=0);
    a script without the line on a cluster whose default requeues (Requeue=1) is fine."""
    [warning] = preflight(TRAINER, slurm_env(), GOOD_SCRIPT, recorded_job("no-requeue-3min"))
    assert "the job is not requeueable (Slurm shows Requeue=0: `--no-requeue`" in warning
    assert "submit without `--no-requeue`" in warning
    assert preflight(TRAINER, slurm_env(), GOOD_SCRIPT.replace("#SBATCH --requeue\n", ""), DAY_JOB) == []


@pytest.mark.parametrize(("signal_env", "recorded", "warned"), [
    ({}, "requeue-2min", True),                            # --time=2 against @90: 120 s <= 90 + 60
    ({"SBATCH_SIGNAL": "USR1"}, "requeue-2min", True),     # no @: Slurm's 60 s lead, 120 <= 60 + 60
    ({"SBATCH_SIGNAL": "USR1@30"}, "requeue-2min", False),  # 120 > 30 + 60
    ({}, "no-requeue-3min", False),                        # 180 > 150 (only the requeue warning)
    ({}, "unlimited", False),
])
def test_a_time_limit_within_the_signal_lead_is_a_warning(signal_env: dict[str, str], recorded: str,
                                                          warned: bool) -> None:
    warnings = [w for w in preflight(TRAINER, slurm_env(**signal_env), GOOD_SCRIPT, recorded_job(recorded))
                if "not requeueable" not in w]
    if not warned:
        assert warnings == []
        return
    [warning] = warnings
    assert re.search(r"the job's time limit \(120 s\) is not above the (90|60) s lead of `--signal=\S+` plus 60 s",
                     warning), warning
    assert "give `#SBATCH --time` at least 3 minutes" in warning


def test_job_records_and_time_limits_as_scontrol_prints_them() -> None:
    day, two, unlimited = (recorded_job(n) for n in ("array-task-1day", "requeue-2min", "unlimited"))
    assert (day["JobId"], day["ArrayJobId"], day["ArrayTaskId"], day["Requeue"]) == ("6", "3", "1", "1")
    assert day["TRES"] == "cpu=1,node=1,billing=1" and day["Command"] == "/tmp/sj/rec.sh"
    assert [time_limit_s(j["TimeLimit"]) for j in (day, two, unlimited)] == [86400, 120, None]
    assert time_limit_s("10:00:00") == 36000 and time_limit_s(None) is None


def test_the_job_is_read_from_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `script`/`job`, the preflight asks `scontrol` about SLURM_JOB_ID (a fake that replays the record)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "script.sh").write_text(GOOD_SCRIPT)
    fake = bin_dir / "scontrol"
    fake.write_text(f"""#!/bin/sh
case "$*" in
  "show job 42") cat {RECORDED / "no-requeue-3min.txt"} ;;
  "write batch_script 42 -") cat {tmp_path / "script.sh"} ;;
  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
esac
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    [warning] = preflight(TRAINER, slurm_env())
    assert "Requeue=0" in warning
    assert preflight(TRAINER, slurm_env(SLURM_JOB_ID="43")) == []  # nothing readable: nothing to warn about


def test_keys_of_the_first_fsdp_stop_at_start_up_naming_their_fsdp2_counterparts(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "run", "trainer=fsdp", "trainer.devices=2", "+trainer.strategy.sharding_strategy=FULL_SHARD",
                        "+trainer.strategy.state_dict_type=sharded")
    with pytest.raises(ConfigError, match=r"(?s)FSDP2 now.*sharding_strategy: use reshard_after_forward=true.*"
                                          r"state_dict_type: use nothing: last/requeue checkpoints are sharded"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # before anything is written or loaded
    with pytest.raises(ConfigError, match="the first FSDP is not supported"):
        check_strategy(compose_train(tmp_path / "run", "trainer=ddp", "trainer.strategy._target_=lightning.pytorch.strategies.FSDPStrategy").trainer)
    check_strategy(compose_train(tmp_path / "run", "trainer=fsdp", "trainer.accelerator=cpu").trainer)  # FSDP2 runs on CPUs
    check_strategy(compose_train(tmp_path / "run", "trainer=ddp", "trainer.accelerator=cpu").trainer)
