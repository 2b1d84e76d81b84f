"""W&B offline: the run carries the resolved config, the run folder path, and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tunelab.train import run

pytest.importorskip("wandb")


def test_wandb_offline_run_holds_config_and_run_folder(tiny_bert: Path, learnable_csv: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1", "logger=wandb", "tags=[t1]")))
    (offline,) = (out / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads: protobuf records, strings verbatim
    data = records.read_bytes()
    for expected in ("run_dir", str(out), "task.data.source.path", "optimizer.lr", "csv-tiny-test-full", "t1",
                     "final/accuracy", "val/macro_f1", "train/loss_step"):
        assert expected.encode() in data, expected
