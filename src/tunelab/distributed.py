"""Multi-process runs: the Slurm preflight check, the strategy check, who took part.

Lightning does the distributed work (``SLURMEnvironment`` reads ranks from Slurm, DDP, FSDP2 through
``tunelab.fsdp``; the requeue on SIGUSR1 is ``tunelab.requeue``); this module checks before training that the
Slurm job is laid out the way the trainer config expects, because a mismatch (``srun`` missing, tasks per node
!= devices) hangs or fails late, and that the job can be requeued in time (signal, time limit, ``--requeue``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

MIN_SIGNAL_LEAD_S = 30  # seconds a checkpoint of a large model may need before Slurm kills the job
DEFAULT_SIGNAL_LEAD_S = 60  # Slurm's lead for a --signal without @<seconds>
SIGNAL_MARGIN_S = 60  # time limit beyond the signal lead: start-up and some training before the signal


def _tasks_per_node(env: Mapping[str, str]) -> int | None:
    """Tasks per node of this step: ``SLURM_STEP_TASKS_PER_NODE`` ('2(x2)'), else ``SLURM_NTASKS_PER_NODE``."""
    value = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE")
    if not value:
        return None
    counts = {int(m) for m in re.findall(r"(\d+)(?:\(x\d+\))?", value)}
    return counts.pop() if len(counts) == 1 else None


def _scontrol(*args: str) -> str | None:
    """What ``scontrol <args>`` prints, or ``None`` where it cannot run or fails."""
    try:
        proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def batch_script(job_id: str) -> str | None:
    """The job's batch script (``scontrol write batch_script``), or ``None`` where it cannot be read."""
    return _scontrol("write", "batch_script", job_id, "-")


def parse_job(text: str) -> dict[str, str]:
    """The fields of the first job record that ``scontrol show job`` printed (``Requeue``, ``TimeLimit``, ...)."""
    record = text.strip().split("\n\n", 1)[0]
    return dict(re.findall(r"(?<!\S)([A-Za-z][\w/:]*)=(\S*)", record))


def job_settings(job_id: str) -> dict[str, str] | None:
    """The job's settings as Slurm holds them (``scontrol show job``: the ``sbatch`` command line and
    ``SBATCH_*`` variables override the script's ``#SBATCH`` lines), or ``None`` where they cannot be read."""
    text = _scontrol("show", "job", job_id)
    return parse_job(text) if text else None


def time_limit_s(value: str | None) -> int | None:
    """Seconds of a ``TimeLimit`` as ``scontrol`` prints it (``1-00:00:00``, ``00:02:00``); ``None`` when
    ``UNLIMITED`` or unknown."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", value or "")
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def signal_problems(env: Mapping[str, str], script: str | None, time_limit: int | None = None) -> list[str]:
    """Why the requeue (``tunelab.requeue``) would not get the chance to checkpoint (empty list: it will).

    The signal is the one of ``SBATCH_SIGNAL`` (set at submission), else the script's last ``#SBATCH --signal``:
    Slurm does not show a job its ``--signal`` (neither ``scontrol show job`` nor the job's environment has
    it), so one given on the ``sbatch`` command line cannot be checked. ``time_limit`` (seconds): the job's.
    """
    specs = re.findall(r"^#SBATCH\s+--signal[=\s]+(\S+)", script or "", flags=re.MULTILINE)
    spec = env.get("SBATCH_SIGNAL") or (specs[-1] if specs else None)
    wanted = signal.Signals.SIGUSR1.name.removeprefix("SIG")
    if spec is None:
        if script is None:
            return []  # cannot tell (e.g. --signal given on the sbatch command line and the script unreadable)
        return ["no signal before the time limit or preemption: add `#SBATCH --signal=SIGUSR1@90` so that the run "
                "saves a checkpoint and requeues the job (and `#SBATCH --requeue`); a `--signal` given on the sbatch "
                "command line is not visible to the job, so this check cannot see it"]
    match = re.fullmatch(r"(?:(R|B|RB|BR):)?(?:SIG)?(\w+?)(?:@(\d+))?", spec.strip())
    if not match:
        return [f"cannot read `--signal={spec}`; use `#SBATCH --signal=SIGUSR1@90`"]
    flags, name, lead = match.group(1) or "", match.group(2).upper(), match.group(3)
    problems = []
    if "B" in flags:
        problems.append(f"`--signal={spec}` signals only the batch shell, not the training processes that srun "
                        "starts: drop the `B:` (`#SBATCH --signal=SIGUSR1@90`)")
    if name not in (wanted, str(int(signal.SIGUSR1))):
        problems.append(f"`--signal={spec}` sends SIG{name}, but the run requeues on SIGUSR1: use "
                        "`#SBATCH --signal=SIGUSR1@90`")
    lead_s = int(lead) if lead is not None else DEFAULT_SIGNAL_LEAD_S
    if lead_s < MIN_SIGNAL_LEAD_S:
        problems.append(f"`--signal={spec}` leaves {lead_s} s to save a checkpoint; give at least "
                        f"{MIN_SIGNAL_LEAD_S} s (`#SBATCH --signal=SIGUSR1@90`)")
    if time_limit is not None and time_limit <= lead_s + SIGNAL_MARGIN_S:
        problems.append(f"the job's time limit ({time_limit} s) is not above the {lead_s} s lead of `--signal={spec}` "
                        f"plus {SIGNAL_MARGIN_S} s: the requeue signal comes during start-up or the first steps, so "
                        f"every attempt requeues (or ends) with little or no training done; give `#SBATCH --time` "
                        f"at least {math.ceil((lead_s + SIGNAL_MARGIN_S + 1) / 60)} minutes")
    return problems


def requeue_problem(env: Mapping[str, str], script: str | None, job: Mapping[str, str]) -> str | None:
    """Why the job cannot be requeued, or ``None``: its ``Requeue`` flag where Slurm shows it (the command line
    and cluster default included), else the script's ``#SBATCH --requeue`` (or ``SBATCH_REQUEUE``)."""
    if "Requeue" in job:
        return "Slurm shows Requeue=0: `--no-requeue`, or the cluster's JobRequeue=0" if job["Requeue"] == "0" else None
    if script is None or "SBATCH_REQUEUE" in env or re.search(r"^#SBATCH\s+--requeue\b", script, flags=re.MULTILINE):
        return None
    return "no `#SBATCH --requeue` in the script"


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # "auto", -1 and lists: Lightning decides


def preflight(trainer_cfg: Mapping[str, Any], env: Mapping[str, str] | None = None,
              script: str | None = None, job: Mapping[str, str] | None = None) -> list[str]:
    """Check a run under Slurm before it starts; returns warnings, raises ``ConfigError`` for layouts
    that would hang or fail (each problem names the sbatch line or config key to change).

    Checks: launched through ``srun``; tasks per node == ``trainer.devices``; nodes ==
    ``trainer.num_nodes``; a ``--signal`` that reaches the training processes early enough, and a time
    limit above its lead (warning); ``--requeue`` (warning). ``script`` (the batch script) and ``job``
    (``job_settings``) are read from Slurm when not given; the job's ``Requeue`` and ``TimeLimit`` are the
    ones in effect, whatever the script says. Outside Slurm, or in an interactive allocation (job name
    ``bash``/``interactive``, which Lightning also leaves alone), nothing is checked.
    """
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID")
    if not job_id or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return []
    devices, nodes = _as_int(trainer_cfg.get("devices")), _as_int(trainer_cfg.get("num_nodes", 1))
    errors = []
    if "SLURM_STEP_ID" not in env:
        errors.append("not launched through srun: start training with `srun python train.py ...` in the sbatch "
                      "script, so that Slurm starts one task per device on every node (see slurm/train.sbatch)")
    else:
        per_node = _tasks_per_node(env)
        step_nodes = _as_int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES"))
        ntasks = _as_int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")) or 1
        if per_node is None and ntasks > 1:
            errors.append(f"Slurm runs {ntasks} tasks unevenly over the nodes (`--ntasks` without "
                          "`--ntasks-per-node`): use `#SBATCH --ntasks-per-node=<devices per node>`")
        elif devices is not None and per_node is not None and per_node != devices:
            errors.append(f"trainer.devices={devices} but Slurm starts {per_node} task(s) per node: set "
                          f"`#SBATCH --ntasks-per-node={devices}` (one task per device), or trainer.devices={per_node}")
        if nodes is not None and step_nodes is not None and step_nodes != nodes:
            errors.append(f"trainer.num_nodes={nodes} but the job runs on {step_nodes} node(s): set "
                          f"`#SBATCH --nodes={nodes}`, or trainer.num_nodes={step_nodes}")
    if errors:
        raise ConfigError("Slurm job and trainer config disagree (the run would hang or fail):\n  - "
                          + "\n  - ".join(errors))
    script = script if script is not None else batch_script(job_id)
    job = job if job is not None else job_settings(job_id) or {}
    warnings = signal_problems(env, script, time_limit_s(job.get("TimeLimit")))
    problem = requeue_problem(env, script, job)
    if problem:
        warnings.append(f"the job is not requeueable ({problem}): add `#SBATCH --requeue` and submit without "
                        "`--no-requeue`, or the `scontrol requeue` on SIGUSR1 fails and a preempted run stops")
    return warnings


# Keys of the first FSDP (Lightning's FSDPStrategy), and what FSDP2Strategy (trainer=fsdp) has instead.
FSDP1_KEYS = {
    "sharding_strategy": "reshard_after_forward=true (FULL_SHARD) or false (SHARD_GRAD_OP); hybrid_shard=true (HYBRID_SHARD)",
    "auto_wrap_policy": "blocks (null: found in the model; or the blocks' ModuleList path)",
    "activation_checkpointing_policy": "activation_checkpointing=true",
    "state_dict_type": "nothing: last/requeue checkpoints are sharded, best.ckpt is full",
    "limit_all_gathers": "nothing (FSDP2 limits its all-gathers itself)",
    "use_orig_params": "nothing (FSDP2 keeps each parameter as itself)",
}


def check_strategy(trainer_cfg: Mapping[str, Any]) -> None:
    """Stop at start-up on a strategy config written for the first FSDP (Lightning's ``FSDPStrategy``,
    whose ``state_dict_type`` API torch deprecates): ``trainer=fsdp`` is FSDP2 (``tunelab.fsdp``) now, and
    each old key is named with its counterpart."""
    strategy = trainer_cfg.get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, Mapping) else str(strategy or "")
    if target.rsplit(".", 1)[-1] == "FSDPStrategy" or target.startswith("fsdp"):
        raise ConfigError(f"trainer.strategy={target}: the first FSDP is not supported; trainer=fsdp shards with "
                          "FSDP2 (tunelab.fsdp.FSDP2Strategy, torch's fully_shard), on GPUs and CPU processes alike")
    if isinstance(strategy, Mapping) and target == "tunelab.fsdp.FSDP2Strategy":
        old = [key for key in strategy if key in FSDP1_KEYS]
        if old:
            raise ConfigError("trainer=fsdp is FSDP2 now; these trainer.strategy keys belong to the first FSDP:\n  - "
                              + "\n  - ".join(f"{key}: use {FSDP1_KEYS[key]}" for key in old))


def every_rank(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``all_gather_object``: a collective, every rank calls it);
    ``[obj]`` outside a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, obj)
    return everyone


def rank_info(train_samples: int, **extra: Any) -> list[dict[str, Any]]:
    """Who took part: one entry per rank (rank, node, pid, training samples it saw, and ``extra``, e.g.
    the parameter elements the rank holds), gathered to every rank; a single entry outside a process group."""
    import socket

    import torch.distributed as dist

    return every_rank({"rank": dist.get_rank() if dist.is_initialized() else 0,
                       "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
                       "pid": os.getpid(), "train_samples": train_samples, **extra})


def gather_eval_rows(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Per evaluation set, every rank's rows in one list, in the single-process order: rank ``r`` scored
    examples ``r, r + world, ...`` of the evaluation order (``DistributedEvalSampler``), so the lists are
    interleaved back, and rows that name their ``row`` are sorted by it. A task's cap on kept rows applies
    per rank. A collective under a process group (every rank calls it); ``rows`` as is outside one."""
    everyone = every_rank(rows)
    if len(everyone) == 1:
        return rows
    merged: dict[str, list[Any]] = {}
    for name in everyone[0]:
        parts = [ranks_rows.get(name, []) for ranks_rows in everyone]
        merged[name] = [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]
        if merged[name] and all(isinstance(row, dict) and "row" in row for row in merged[name]):
            merged[name].sort(key=lambda row: row["row"])
    return merged
