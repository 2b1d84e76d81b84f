"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Files and folders come out with the permissions a plain ``open()`` / ``mkdir`` would give them under the
current umask (``tempfile`` would leave them 0600 / 0700), so colleagues in the group can read a run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, from ``/proc/self/status``; where there is none, by setting and restoring it
    (which races with threads that create files meanwhile, hence not the first choice)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp made it 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _default_modes(root: Path) -> None:
    """Give ``root`` and everything in it the modes ``open()`` (0666) and ``mkdir`` (0777) give under the
    umask: mkdtemp made ``root`` 0700, and libraries such as safetensors write 0600 files. Links are left alone."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    root.chmod(dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            entry = Path(folder, name)
            if entry.is_symlink():
                continue
            executable = entry.is_dir() or entry.stat().st_mode & 0o100
            entry.chmod(dir_mode if executable else file_mode)


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)`` and move the finished folder to ``path`` (replacing an old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        _default_modes(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
