"""Atomic writes: a failure while writing leaves the previous file or folder untouched, and what is
written gets the permissions a plain open()/mkdir would give it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tunelab.io import atomic_write_dir, atomic_write_json, atomic_write_text, current_umask
from tunelab.run_folder import RunFolder


def test_atomic_write_text_keeps_old_content_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"accuracy": 0.9})
    with pytest.raises(TypeError):
        atomic_write_text(path, object())  # type: ignore[arg-type]  # fails mid-write
    assert path.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_dir_replaces_whole_folder_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    atomic_write_dir(target, lambda p: (p / "weights.bin").write_text("v1"))

    def broken(p: Path) -> None:
        (p / "weights.bin").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, broken)
    assert (target / "weights.bin").read_text() == "v1"
    atomic_write_dir(target, lambda p: (p / "other.bin").write_text("v2"))
    assert [p.name for p in target.iterdir()] == ["other.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_run_folder_files_get_the_modes_of_a_plain_open(umask: int, file_mode: int, dir_mode: int, tmp_path: Path) -> None:
    """Old: mkstemp/mkdtemp (and safetensors) left them 0600/0700, unreadable by the group."""
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        folder = RunFolder(tmp_path)
        atomic_write_text(folder.config, "seed: 1\n")
        folder.set_status("running")
        folder.write_metrics({"test": {"accuracy": 0.9}})

        def export(path: Path) -> None:
            save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
            (path / "merged").mkdir()
            (path / "merged" / "config.json").write_text("{}")

        atomic_write_dir(folder.model_dir, export)
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"config.yaml": file_mode, "status.json": file_mode, "metrics.json": file_mode, "model": dir_mode,
                     "model/model.safetensors": file_mode, "model/merged": dir_mode, "model/merged/config.json": file_mode}
