"""Few-shot subsets (task.data.few_shot) and data-size curves (task.data.train_fraction)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tests.ner_fixtures import tagged_rows, write_jsonl
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.train import build_datamodule

pytestmark = pytest.mark.usefixtures("one_thread")


def splits(tmp_path: Path, tiny_bert: Path, data: Path, *overrides: str) -> dict[str, list[str]]:
    """The texts of each split after set-up."""
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, data, *overrides))
    dm = build_datamodule(cfg, load_tokenizer(cfg.model))
    dm.setup("fit")
    return {name: list(ds["text"]) for name, ds in dm.examples.items()}


@pytest.fixture(scope="module")
def topics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """600 distinct rows, 200 per class, and each text's label."""
    rows = make_rows(900, seed=11).drop_duplicates("text").head(600)
    path = tmp_path_factory.mktemp("few-shot") / "topics.csv"
    rows.to_csv(path, index=False)
    return path, dict(zip(rows["text"], rows["label"], strict=True))


def test_k_shot_is_stratified_and_the_same_for_every_training_seed(topics, tiny_bert: Path, tmp_path: Path) -> None:
    data, label_of = topics
    full = splits(tmp_path / "full", tiny_bert, data)
    a = splits(tmp_path / "a", tiny_bert, data, "task.data.few_shot.k=4", "seed=1")
    b = splits(tmp_path / "b", tiny_bert, data, "task.data.few_shot.k=4", "seed=2")
    assert sorted(Counter(label_of[t] for t in a["train"]).values()) == [4, 4, 4]
    assert set(a["train"]) <= set(full["train"])  # drawn from train, after carving
    assert a["test"] == full["test"]  # held-out splits do not change
    assert sorted(Counter(label_of[t] for t in a["validation"]).values()) == [4, 4, 4]  # k-shot validation
    assert a == b  # another training seed: the same k-shot set
    c = splits(tmp_path / "c", tiny_bert, data, "task.data.few_shot.k=4", "task.data.few_shot.seed=7")
    assert c["train"] != a["train"] and sorted(Counter(label_of[t] for t in c["train"]).values()) == [4, 4, 4]
    full_val = splits(tmp_path / "d", tiny_bert, data, "task.data.few_shot.k=4", "task.data.few_shot.validation=full")
    assert full_val["validation"] == full["validation"] and full_val["train"] == a["train"]


def test_a_class_with_fewer_than_k_examples_is_used_whole(tmp_path: Path, tiny_bert: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    rows = make_rows(450, seed=3).drop_duplicates("text")
    rare = rows["label"].iloc[0]
    rows = rows[(rows["label"] != rare) | (rows.groupby("label").cumcount() < 30)]  # 30 of one class: ~24 in train
    data = tmp_path / "rare.csv"
    rows.to_csv(data, index=False)
    with caplog.at_level(logging.WARNING):
        out = splits(tmp_path, tiny_bert, data, "task.data.few_shot.k=30", "task.data.quality.min_class_count.policy=off")
    assert "task.data.few_shot.k=30: train has fewer examples of" in caplog.text
    assert 30 * 2 < len(out["train"]) < 30 * 3


def test_train_fraction_takes_a_seeded_share_for_any_family(topics, tiny_bert: Path, tmp_path: Path) -> None:
    data, _ = topics
    full = splits(tmp_path / "full", tiny_bert, data)
    half = splits(tmp_path / "half", tiny_bert, data, "task.data.train_fraction=0.25")
    assert len(half["train"]) == len(full["train"]) // 4 and set(half["train"]) <= set(full["train"])
    assert half["validation"] == full["validation"] and half["test"] == full["test"]
    assert splits(tmp_path / "again", tiny_bert, data, "task.data.train_fraction=0.25", "seed=5") == half
    ner = write_jsonl(tagged_rows(80, seed=1), tmp_path / "ner.jsonl")
    cfg = compose_train(tmp_path / "ner", "task=ner-json", f"task.data.source.data_files.train={ner}",
                        f"model.name_or_path={tiny_bert}", "task.data.train_fraction=0.5")
    dm = build_datamodule(cfg, load_tokenizer(cfg.model))
    dm.setup("fit")
    carved = compose_train(tmp_path / "ner-full", "task=ner-json", f"task.data.source.data_files.train={ner}",
                           f"model.name_or_path={tiny_bert}")
    whole = build_datamodule(carved, load_tokenizer(carved.model))
    whole.setup("fit")
    assert len(dm.examples["train"]) == len(whole.examples["train"]) // 2
    cfg = compose_train(tmp_path / "ner-k", "task=ner-json", f"task.data.source.data_files.train={ner}",
                        f"model.name_or_path={tiny_bert}", "task.data.few_shot.k=4")
    with pytest.raises(ConfigError, match="this task family has no class label column"):
        build_datamodule(cfg, load_tokenizer(cfg.model)).setup("fit")


@pytest.mark.parametrize("override,message", [
    ("task.data.few_shot.k=0", r"task.data.few_shot.k must be null \(off\) or a whole number >= 1"),
    ("task.data.few_shot.validation=half", "task.data.few_shot.validation must be kshot or full, got 'half'"),
    ("task.data.train_fraction=1.5", r"task.data.train_fraction must be null \(off\) or a number in \(0, 1\]"),
    ("task.data.few_shot.k=4 task.data.train_fraction=0.5", "both subsample train: set one of them"),
    ("task.data.few_shot.k=4 task.data.max_samples.train=10", "draws the train rows itself, and task.data.max_samples"),
])
def test_bad_settings_are_refused(override: str, message: str, topics, tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        splits(tmp_path, tiny_bert, topics[0], *override.split())


def test_a_k_shot_run_records_its_sizes(topics, tiny_bert: Path, tmp_path: Path) -> None:
    from tunelab.train import run

    run(compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, topics[0], "task.data.few_shot.k=8",
                                                         "trainer.max_epochs=1")))
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    assert data["train"] == 24 and data["validation"] == 24 and data["test"] > 24
