"""The run folder: the unit of truth that every table, plot and dashboard is derived from.

Layout::

    <run_dir>/
      config.yaml          resolved config of the run
      environment.json     package versions, git commit, hardware, command line
      status.json          running | completed | failed (+ error), updated atomically
      metrics.json         best validation and test metrics, parameter counts, throughput
      samples/<set>.jsonl  generation tasks: source, reference and output of each test example
      checkpoints/         best and last Lightning checkpoints
      model/               the tuned model + tokenizer in Hugging Face format
      logs/                logger output (csv / tensorboard / wandb)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tunelab.io import atomic_write_json, atomic_write_text

PACKAGES = (
    "tunelab", "torch", "lightning", "transformers", "tokenizers", "datasets", "torchmetrics",
    "hydra-core", "omegaconf", "peft", "accelerate", "huggingface-hub", "numpy", "wandb",
)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_info(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the code's repository (``None`` outside a git checkout)."""
    cwd = cwd or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def environment() -> dict[str, Any]:
    return {
        "created": _now(),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_info(),
        "hardware": hardware(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


class RunFolder:
    """Writes the files of one run folder, each atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.json")
    status_file = property(lambda self: self.path / "status.json")
    model_dir = property(lambda self: self.path / "model")

    def create(self, cfg: DictConfig, resumed_from: str | None = None) -> None:
        """Write config, environment and ``running`` status (a resumed run's attempt overwrites them)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(self.path / "environment.json", environment())
        self.set_status("running", **({"resumed_from": resumed_from} if resumed_from else {}))

    def set_status(self, status: str, **extra: Any) -> None:
        atomic_write_json(self.status_file, {"status": status, "updated": _now(), **extra})

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics, metrics)

    def write_samples(self, name: str, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / "samples" / f"{name}.jsonl",
                          "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def status(self) -> str | None:
        if not self.status_file.exists():
            return None
        return json.loads(self.status_file.read_text())["status"]
