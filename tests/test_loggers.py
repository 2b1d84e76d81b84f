"""W&B offline: the run carries the resolved config, the run folder path, and the metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
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


def test_csv_log_continues_across_attempts(tmp_path: Path) -> None:
    """A resumed run keeps the rows of earlier attempts up to the step it resumes from."""
    from tunelab.loggers import ResumableCSVLogger

    first = ResumableCSVLogger(tmp_path, name="logs", version="")
    for step in range(10):
        first.log_metrics({"train/loss": 10.0 - step}, step=step)
    first.save()
    second = ResumableCSVLogger(tmp_path, name="logs", version="")  # resumed from the checkpoint of step 6
    for step in range(6, 12):
        second.log_metrics({"train/loss": 100.0 + step, "val/acc": 0.5}, step=step)
    second.save()
    frame = pd.read_csv(tmp_path / "logs" / "metrics.csv")
    assert frame["step"].tolist() == list(range(12))
    assert frame["train/loss"].tolist() == [10.0 - s for s in range(6)] + [100.0 + s for s in range(6, 12)]
    assert frame["val/acc"].isna().sum() == 6


def test_wandb_logger_passes_no_anonymous_setting(tmp_path: Path) -> None:
    """wandb >= 0.19 warns on every run that `anonymous` has no effect; Lightning always passes it."""
    from lightning.pytorch.loggers import WandbLogger

    from tunelab.loggers import QuietWandbLogger

    assert "anonymous" in WandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init
    assert "anonymous" not in QuietWandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init
    assert QuietWandbLogger(save_dir=str(tmp_path), anonymous=True)._wandb_init["anonymous"] == "allow"
