"""Sentence-pair regression (STS-B style): a tiny BERT learns a score from a text pair."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CLASS_WORDS, NOISE, tiny_overrides
from tests.helpers import compose_train
from tunelab.data import RegressionDataModule
from tunelab.errors import DataError
from tunelab.train import run


def scored_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """Score = how many fruit words the two texts hold together (0-4)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 4)
        words = [rng.choice(CLASS_WORDS["alpha"]) for _ in range(k)] + [rng.choice(NOISE) for _ in range(6)]
        rng.shuffle(words)
        rows.append({"sentence1": " ".join(words[:5]), "sentence2": " ".join(words[5:]), "label": float(k)})
    return pd.DataFrame(rows)


def stsb_local(data: Path, n: int = 600) -> list[str]:
    """Overrides for task=stsb on ``n`` scored pairs, written to the csv ``data`` and carved 80/10/10."""
    scored_pairs(n).to_csv(data, index=False)
    return ["task=stsb", "~task.data.source",
            f"+task.data.source={{_target_: tunelab.data.sources.load, data_files: {{train: {data}}}}}",
            "task.data.splits=null", "task.data.val_size=0.1", "task.data.test_size=0.1"]


def test_regression_learns_a_score(tiny_bert: Path, tmp_path: Path) -> None:
    data = tmp_path / "pairs.csv"
    cfg = compose_train(tmp_path / "run", *stsb_local(data), *tiny_overrides(tiny_bert, data)[2:],
                        "trainer.max_epochs=8")
    metrics = run(cfg)
    assert metrics["test"]["pearson"] > 0.8 and metrics["test"]["spearman"] > 0.8
    assert metrics["test"]["mse"] < 1.0  # the scores' variance is 2


def test_non_numeric_scores_are_rejected_with_rows(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    frame = scored_pairs(30)
    frame["label"] = frame["label"].astype(object)
    frame.loc[[2, 9], "label"] = ["high", "low"]
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    dm = RegressionDataModule(AutoTokenizer.from_pretrained(tiny_bert), text_column="sentence1", text_pair_column="sentence2",
                              source={"_target_": "tunelab.data.sources.load", "data_files": {"train": str(path)}})
    with pytest.raises(DataError, match=r"2 rows .* non-numeric labels in 'label' .*: data rows 3, 10 \(file lines 4, 11\) with values \['high', 'low'\]"):
        dm.setup("fit")
