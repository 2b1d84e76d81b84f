"""Scoring a finished run on new data, with and without labels."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_rows
from tunelab.errors import TunelabError
from tunelab.predict import main, predict


def test_predict_labelled_file_writes_predictions_and_metrics(finished_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = finished_run
    data = tmp_path / "new.csv"
    rows = make_rows(45, seed=7)
    rows.to_csv(data, index=False)
    result = predict(run_dir, data, tmp_path / "out.csv")
    written = pd.read_csv(result["predictions"])
    assert written["text"].tolist() == rows["text"].tolist()  # input order kept
    accuracy = (written["prediction"] == written["label"]).mean()
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert accuracy > 0.8
    assert json.loads(Path(result["metrics_file"]).read_text())["metrics"]["accuracy"] == pytest.approx(accuracy)


def test_predict_unlabelled_jsonl_with_other_text_column(finished_run: tuple[Path, dict], tmp_path: Path, capsys) -> None:
    run_dir, _ = finished_run
    data = tmp_path / "new.jsonl"
    make_rows(12, seed=3).rename(columns={"text": "body"})[["body"]].to_json(data, orient="records", lines=True)
    assert main([str(run_dir), str(data), "--text-column", "body", "-o", str(tmp_path / "p.jsonl")]) == 0
    out = pd.read_json(tmp_path / "p.jsonl", lines=True)
    assert len(out) == 12 and set(out["prediction"]) <= {"alpha", "beta", "gamma"}
    assert out["confidence"].between(1 / 3, 1).all()
    assert "metrics" not in json.loads(capsys.readouterr().out)


def test_predict_rejects_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="not a finished run folder"):
        predict(tmp_path, tmp_path / "x.csv")
