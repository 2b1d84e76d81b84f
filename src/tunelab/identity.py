"""Run identity: a run's folder, checkpoints and W&B id follow from its config.

The same config (and ``run_id``, when a user names the run) always gives the same folder
``<root>/<run_name>/<run_id>``, on every rank and in every attempt of a job. So a requeued Slurm job,
a re-submitted sweep or a manual re-run after a crash finds the run's last checkpoint and resumes it
(``resume=auto``), and a run that already completed is not trained again.

Resolvers (registered in ``tunelab.config``):

- ``${config_hash:}``: 10 hex digits of the resolved config without the keys that do not change what
  is trained (``VOLATILE_KEYS``: where runs are stored, loggers, progress display, resume settings).
- ``${run_folder:${run_id},${resume}}``: the folder name; ``resume=never`` appends the Slurm job id
  (or the time) so that a fresh run never reuses a folder.
- ``${wandb_id:${paths.output_dir}}``: a W&B run id derived from the run folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

# Top-level keys that do not change what a run trains: left out of the config hash.
VOLATILE_KEYS = frozenset({"hydra", "paths", "logger", "progress", "resume", "ckpt_path", "run_id", "tags", "group"})
RESUME_MODES = ("auto", "never", "must")


def config_hash(*, _root_: DictConfig) -> str:
    """Hash of the resolved config, without ``VOLATILE_KEYS``; paths read as placeholders."""
    raw = OmegaConf.to_container(_root_, resolve=False)
    assert isinstance(raw, dict)
    # Keys such as checkpoint dirs point into the run folder: resolve them against a fixed stand-in.
    raw["paths"] = {k: f"<paths.{k}>" for k in (raw.get("paths") or {})}
    raw.pop("hydra", None)
    stable = OmegaConf.create(raw)
    content = {k: OmegaConf.to_container(stable[k], resolve=True) if OmegaConf.is_config(stable[k]) else stable[k]
               for k in stable if k not in VOLATILE_KEYS}
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_folder(run_id: Any, resume: str) -> str:
    """The folder name of a run: ``run_id``, or ``run_id-<job id or time>`` for ``resume=never``."""
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    if resume != "never":
        return str(run_id)
    stamp = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if stamp and os.environ.get("SLURM_ARRAY_TASK_ID"):
        stamp = f"{stamp}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return f"{run_id}-{stamp or dt.datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"


def wandb_id(output_dir: str) -> str:
    """A W&B run id that every attempt of the run (and every rank) derives the same way."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint to resume from: ``hpc_ckpt_<n>.ckpt`` (saved on a Slurm requeue signal) or
    ``checkpoints/last.ckpt``; ``None`` when the run has neither. Sharded (FSDP) checkpoints are folders."""
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    existing = [p for p in candidates if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    return max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else None


def read_completed(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a run folder whose ``status.json`` says completed, else ``None``."""
    try:
        status = json.loads((run_dir / "status.json").read_text())["status"]
        if status == "completed":
            return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError, KeyError):
        pass
    return None
