"""Run identity: a run's folder, checkpoints and W&B id follow from its config.

The same config (and ``run_id``, when a user names the run) always gives the same folder
``<root>/<run_name>/<run_id>``, on every rank and in every attempt of a job. So a requeued Slurm job,
a re-submitted sweep or a manual re-run after a crash finds the run's last checkpoint and resumes it
(``resume=auto``), and a run that already completed is not trained again.

Resolvers (registered in ``tunelab.config``):

- ``${config_hash:}``: 10 hex digits of the resolved config without the keys that do not change what
  is trained (``VOLATILE_KEYS``: where runs are stored, loggers, progress display, resume settings, the
  search trial a run reports to).
- ``${run_folder:${run_id},${resume}}``: the folder name; ``resume=never`` appends the Slurm job id
  (or the time) so that a fresh run never reuses a folder.
- ``${wandb_id:${paths.output_dir}}``: a W&B run id derived from the run folder.

The hash also covers the *content* of the local data the task reads (``data_fingerprint``: sizes and
SHA-256 of every file or folder named in ``task.data.source``, and of ``task.data.augment``'s word list), so
replacing a training file gives a new run, never the old one's metrics. Hub datasets are identified by name, config and ``revision`` (pin a
revision to make a run reproducible). A run named by hand (``run_id=...``) records its fingerprint in
``data.json`` and refuses to resume or reuse a folder trained on other data (``check_same_data``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

# Top-level keys that do not change what a run trains: left out of the config hash.
VOLATILE_KEYS = frozenset({"hydra", "paths", "logger", "progress", "resume", "ckpt_path", "run_id", "tags", "group",
                           "search"})
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
    source = ((content.get("task") or {}).get("data") or {}).get("source")
    content["data_fingerprint"] = fingerprint_digest(data_fingerprint(source))
    words = ((((content.get("task") or {}).get("data") or {}).get("augment") or {}).get("synonyms") or {}).get("source")
    if isinstance(words, str) and words != "embedding" and Path(words).expanduser().is_file():  # a word list is data
        content["augment_word_list"] = _file_sha256(Path(words).expanduser())
    if content.get("train") is False and stable.get("ckpt_path"):  # evaluation only: the checkpoint is the run
        checkpoint = Path(str(stable.ckpt_path))
        content["ckpt_path"] = [str(checkpoint.resolve()), checkpoint.stat().st_size if checkpoint.is_file() else None]
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each file hashed once per process


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _path_fingerprint(path: Path) -> dict[str, Any]:
    if path.is_file():
        return {"size": path.stat().st_size, "sha256": _file_sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_sha256(file)}\0".encode())
    return {"files": len(files), "size": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest()}


DATA_KEYS = ("data_files", "root", "data_dir", "path")  # keys of task.data.source that name the data itself


def data_fingerprint(source: Any) -> dict[str, dict[str, Any]]:
    """``{path: {size, sha256}}`` for every local file or folder that a ``task.data.source`` config names
    as its data (``DATA_KEYS``: ``data_files``, a corpus ``root``, ``data_dir``, a local ``path``; not
    caches or other settings). Paths that do not exist are left to the data loader's error."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node:
            path = Path(node).expanduser()
            if path.exists():
                found[node] = _path_fingerprint(path)

    if isinstance(source, Mapping):
        for key in DATA_KEYS:
            walk(source.get(key))
    return found


def fingerprint_digest(fingerprint: Mapping[str, Mapping[str, Any]]) -> str:
    """What the run identity hashes: the content of the files, not where they are nor their times."""
    return hashlib.sha256(json.dumps(sorted(v["sha256"] for v in fingerprint.values())).encode()).hexdigest()[:16]


def check_same_data(run_dir: Path, fingerprint: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse to reuse or resume ``run_dir`` when its recorded data (``data.json``) differs from ``fingerprint``."""
    try:
        recorded = json.loads((run_dir / "data.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return  # a folder from before fingerprints, or a fresh one
    if fingerprint_digest(recorded) == fingerprint_digest(fingerprint):
        return
    changed = sorted(set(recorded) ^ set(fingerprint)) or sorted(
        p for p in fingerprint if recorded.get(p, {}).get("sha256") != fingerprint[p]["sha256"])
    details = "; ".join(
        f"{p}: {recorded.get(p, {}).get('size', 'absent')} -> {fingerprint.get(p, {}).get('size', 'absent')} bytes"
        for p in changed)
    raise ConfigError(
        f"run folder {run_dir} was trained on other data than task.data.source names now ({details}): "
        f"its results and checkpoints do not belong to this data. Name a new run (run_id=<name>), or use "
        f"resume=never to train afresh in a new folder")


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


SHARDED_META = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME: rank 0 writes it after the shards


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a loadable checkpoint (truncated or corrupt file, empty shard folder), or ``None``.

    ``torch.save`` writes a zip archive: a truncated file has no central directory and a damaged one fails
    its CRCs, both found without unpickling anything.
    """
    if path.is_dir():  # Lightning's sharded save: the shards, their .metadata, then the loop state in meta.pt
        for name in (".metadata", SHARDED_META):
            if not (path / name).is_file():
                return f"a sharded checkpoint without its {name} (unfinished)"
        return checkpoint_problem(path / SHARDED_META)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"not a complete checkpoint ({err})"
    return f"damaged entry {bad}" if bad else None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest loadable checkpoint to resume from: ``hpc_ckpt_<n>.ckpt`` (saved on a Slurm requeue signal)
    or ``checkpoints/last.ckpt``; ``None`` when the run has neither. Sharded (FSDP) checkpoints are folders.

    A damaged newest checkpoint (truncated by a full disk or a killed copy) is passed over with a warning
    for the next one; when none is loadable, a ``ConfigError`` names them and the command to continue.
    """
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    existing = [p for p in candidates if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    damaged = []
    for path in sorted(existing, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                log.warning("passing over damaged checkpoint(s) %s: resuming from %s instead",
                            "; ".join(damaged), path)
            return path
        damaged.append(f"{path} ({problem})")
    if not damaged:
        return None
    best = run_dir / "checkpoints" / "best.ckpt"
    hint = (f"Continue from the best checkpoint with ckpt_path={best}, or delete" if best.is_file()
            and checkpoint_problem(best) is None else "Delete")
    raise ConfigError(f"no loadable checkpoint to resume {run_dir}: {'; '.join(damaged)}. {hint} the damaged "
                      "file(s) to train from the start (or resume=never: a new folder)")


def read_completed(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a run folder whose ``status.json`` says completed, else ``None``."""
    try:
        status = json.loads((run_dir / "status.json").read_text())["status"]
        if status == "completed":
            return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError, KeyError):
        pass
    return None
