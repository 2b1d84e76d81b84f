"""Atomic writes: a failure while writing leaves the previous file or folder untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.io import atomic_write_dir, atomic_write_json, atomic_write_text


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
