"""Helpers for tests that need a composed config outside a fixture, or check a finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from tunelab.config import CONFIG_DIR


def compose_train(output_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def assert_predict_scores_the_test_split(run_dir: Path, cfg: DictConfig, metrics: dict, tmp_path: Path) -> None:
    """tunelab-predict on the run's export scores the run's test split with the accuracy the run reported
    (give or take a row: predict reloads the export, whose precision may differ from the run's)."""
    # Imported here: conftest imports this module, and tunelab.train pulls in Lightning.
    from tunelab.models import load_tokenizer
    from tunelab.predict import predict
    from tunelab.train import build_datamodule

    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    datamodule.setup("fit")
    test_csv = tmp_path / "test.csv"
    datamodule.examples["test"].to_pandas().to_csv(test_csv, index=False)
    scored = predict(run_dir, test_csv, output=tmp_path / "pred.jsonl")
    assert scored["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1.5 / metrics["data"]["test"])
