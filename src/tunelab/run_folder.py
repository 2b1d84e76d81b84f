"""The run folder: the unit of truth that every table, plot and dashboard is derived from.

Layout::

    <run_dir>/
      config.yaml          resolved config of the run
      environment.json     package versions, git commit, hardware, command line
      data.json            size and SHA-256 of each local data file the run read (its identity covers them)
      status.json          running | requeued | completed | pruned (a search trial stopped by its pruner, + reason)
                           | failed (+ error), updated atomically
      .lock                held by the one live process of the run (pid, host, Slurm job id inside)
      metrics.json         best validation and test metrics, parameter counts, throughput
      samples/<set>.jsonl  generation tasks: source, reference and output of each test example
      augment_sample.jsonl task.data.augment: a sample of the training copies (row, copy, op, original, augmented)
      checkpoints/         best and last Lightning checkpoints
      model/               the tuned model + tokenizer in Hugging Face format
      logs/                logger output (csv / tensorboard / wandb)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

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
    import torch  # here, so that reading run folders (tunelab-results) does not import torch

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


LOCK_TRIES = 10
UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)  # filesystems without flock (some NFS, Lustre noflock)


class RunFolderBusy(TunelabError):
    """Another live process owns the run folder."""


def owner() -> dict[str, Any]:
    """Who this process is, as a lock file records it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": _now()}


def describe_owner(info: dict[str, Any]) -> str:
    job = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{job}, since {info.get('since', '?')}"


class RunFolder:
    """Writes the files of one run folder, each atomically; ``lock()`` makes its process the only writer."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.json")
    status_file = property(lambda self: self.path / "status.json")
    model_dir = property(lambda self: self.path / "model")
    augment_sample = property(lambda self: self.path / "augment_sample.jsonl")

    def create(self, cfg: DictConfig, resumed_from: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Write config, environment, the data fingerprint (``data.json``, see ``tunelab.identity``) and
        ``running`` status (a resumed run's attempt overwrites them)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(self.path / "environment.json", environment())
        atomic_write_json(self.path / "data.json", {"fingerprint": data or {}})
        self.set_status("running", **({"resumed_from": resumed_from} if resumed_from else {}))

    lock_file = property(lambda self: self.path / ".lock")

    @contextlib.contextmanager
    def lock(self) -> Any:
        """Hold the run folder for this process, or raise ``RunFolderBusy`` naming the live owner.

        An advisory ``flock`` on ``.lock``: the kernel releases it when the process dies (``kill -9``, node
        loss on a local disk), so a lock is never stale; the file's content names the owner for messages.
        Yields the previous owner's record when that process ended without releasing it (crashed, killed,
        out of disk), else ``None``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                owner_info = _read_owner(fd)
                if err.errno in UNSUPPORTED:
                    log.warning("%s: this filesystem has no file locks (%s): running without the one-process "
                                "guard", self.lock_file, os.strerror(err.errno))
                    break
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if owner_info or attempt == LOCK_TRIES - 1:
                    os.close(fd)
                    raise RunFolderBusy(
                        f"run folder {self.path} is in use by {describe_owner(owner_info)}: the same config "
                        f"(run_id) is running there. Wait for it to finish (this command then returns its result), "
                        f"or start another run with run_id=<name> or resume=never"
                    ) from None
                time.sleep(0.2)  # no owner recorded: a reader's brief probe (live_owner), or an owner starting up
        try:
            previous = _read_owner(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner()) + "\n").encode(), 0)
            yield previous or None
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # an empty lock file: nobody owns the folder
            os.close(fd)  # releases the flock

    def live_owner(self) -> dict[str, Any] | None:
        """The record of the process that holds the lock now, or ``None`` (no live process)."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:  # held, or no locks on this filesystem: not known to be gone
            return _read_owner(fd) or {"unknown": os.strerror(err.errno)}
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def set_status(self, status: str, **extra: Any) -> None:
        """Write ``status.json``; when the atomic write fails (disk full), overwrite the old file in place,
        which needs no new blocks, so a failed run does not stay ``running``."""
        record = {"status": status, "updated": _now(), **extra}
        try:
            atomic_write_json(self.status_file, record)
        except OSError as err:
            text = json.dumps(record, default=str) + "\n"
            try:
                with self.status_file.open("r+", encoding="utf-8") as f:
                    f.write(text)
                    f.truncate()
            except OSError:
                log.error("could not write status '%s' to %s: %s", status, self.status_file, err)
                raise err from None

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics, metrics)

    def write_samples(self, name: str, rows: list[dict[str, Any]]) -> None:
        _write_jsonl(self.path / "samples" / f"{name}.jsonl", rows)

    def write_augment_sample(self, rows: list[dict[str, Any]]) -> None:
        _write_jsonl(self.augment_sample, rows)

    def status(self) -> str | None:
        """The recorded status, or ``None`` when there is none (or it cannot be read)."""
        try:
            return json.loads(self.status_file.read_text())["status"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
