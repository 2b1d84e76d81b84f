"""task.data.quality: normalisation, missing values, exact and near duplicates, cross-split overlap and class
counts, each with its policy; rows named as the user's csv numbers them (data row n = file line n + 1)."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.conftest import make_rows, tiny_overrides
from tests.data.test_classification import write
from tests.helpers import compose_train
from tunelab.data import ClassificationDataModule
from tunelab.data.quality import QualityConfig
from tunelab.errors import ConfigError, DataError
from tunelab.results.collect import flatten_metrics

OFF = {"whitespace": False, "missing": "off", "duplicates": "off", "near_duplicates": {"policy": "off"},
       "overlap": "off", "min_class_count": {"policy": "off"}}


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_bert)


def texts(n: int, seed: int = 0, words: int = 30) -> list[str]:
    """``n`` unrelated 30-word texts (words drawn from 5,000), so no two are near each other by chance."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(5000)}" for _ in range(words)) for _ in range(n)]


def frame(rows: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": rows, "label": [("alpha", "beta", "gamma")[i % 3] for i in range(len(rows))]})


def reworded(text: str) -> str:
    """Three neighbouring words of a 30-word text replaced: 23 of its 28 3-word shingles are kept (Jaccard 0.70)."""
    words = text.split()
    words[10:13] = ["new", "words", "here"]
    return " ".join(words)


def datamodule(tokenizer: PreTrainedTokenizerBase, files: dict[str, Path], **quality) -> ClassificationDataModule:
    source = {"_target_": "tunelab.data.sources.load", "path": "csv",
              "data_files": {split: str(path) for split, path in files.items()}}
    return ClassificationDataModule(tokenizer, source=source, quality=quality, labels=["alpha", "beta", "gamma"])


def three_splits(tmp_path: Path, train: list[str], validation: list[str], test: list[str]) -> dict[str, Path]:
    return {split: write(tmp_path, frame(rows), f"{split}.csv")
            for split, rows in (("train", train), ("validation", validation), ("test", test))}


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Path]:
    """train: data row 9 repeats data row 2 exactly, data row 12 rewords data row 5; test: data row 3 is
    train's data row 7, data row 6 rewords train's data row 8; validation: clean."""
    train, validation, test = texts(20, seed=1), texts(10, seed=2), texts(10, seed=3)
    train[8] = train[1]
    train[11] = reworded(train[4])
    test[2] = train[6]
    test[5] = reworded(train[7])
    return three_splits(tmp_path, train, validation, test)


def counts(dm: ClassificationDataModule, split: str) -> dict[str, int]:
    return dm.data_report.metrics()[f"data/{split}"]


# --- within a split, across splits ---------------------------------------------------------------
def test_planted_exact_and_near_duplicates_are_found_and_named(tokenizer, planted, caplog) -> None:
    dm = datamodule(tokenizer, planted, near_duplicates={"threshold": 0.6})
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    log = caplog.text
    assert "task.data.quality.duplicates: 1 rows of split 'train'" in log
    assert "data row 9 (file line 10) repeats data row 2 (file line 3)" in log
    assert "task.data.quality.near_duplicates: 1 rows of split 'train'" in log
    assert "data row 12 (file line 13) ~ data row 5 (file line 6)" in log
    assert {k: counts(dm, "train")[k] for k in ("duplicates", "near_duplicates", "dropped")} == \
        {"duplicates": 1, "near_duplicates": 1, "dropped": 0}
    assert len(dm.examples["train"]) == 20  # warn keeps them
    # across splits: the test rows and the train rows they copy, each in its file
    assert (f"task.data.quality.overlap: 1 rows of split 'test' ({planted['test']}) have an exact copy in split "
            f"'train' ({planted['train']}): test data row 3 (file line 4); train data row 7 (file line 8)") in log
    assert "test data row 6 (file line 7) ~ train data row 8 (file line 9)" in log
    assert counts(dm, "test")["overlap/train"] == 1 and counts(dm, "test")["near_overlap/train"] == 1
    assert counts(dm, "test")["overlap/validation"] == 0 and counts(dm, "validation")["overlap/train"] == 0


def test_default_threshold_ignores_a_reworded_text_but_finds_a_one_word_change(tokenizer, tmp_path) -> None:
    train = texts(10, seed=4)
    train[5] = reworded(train[0])  # Jaccard 0.70: not a near duplicate at 0.9
    train[6] = " ".join([*train[1].split()[:-1], "changed"])  # the last word: 27 of 28 shingles kept (0.93)
    dm = datamodule(tokenizer, three_splits(tmp_path, train, texts(3, seed=5), texts(3, seed=6)))
    dm.setup("fit")
    assert counts(dm, "train")["near_duplicates"] == 1


def test_drop_keeps_the_first_occurrence_and_drops_overlap_from_train_only(tokenizer, planted, caplog) -> None:
    dm = datamodule(tokenizer, planted, duplicates="drop", overlap="drop",
                    near_duplicates={"policy": "drop", "threshold": 0.6})
    raw = {s: pd.read_csv(p) for s, p in planted.items()}
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    kept = dm.examples["train"]["text"]
    # train data rows 9 and 12 (the repeats) go, rows 2 and 5 stay; rows 7 and 8 go (copied into test)
    assert sorted(kept) == sorted(raw["train"]["text"].drop(index=[8, 11, 6, 7]))
    assert dm.examples["test"]["text"] == raw["test"]["text"].tolist()  # never dropped from test
    assert counts(dm, "train")["dropped"] == 4 and counts(dm, "test")["dropped"] == 0
    assert "dropped 1 rows from split 'train', keeping the first of each" in caplog.text
    assert "dropped 1 rows from split 'train'" in caplog.text.split("exact copy")[1]


@pytest.mark.parametrize(("check", "quality", "rows"), [
    ("duplicates", {"duplicates": "error"}, "data row 9 (file line 10) repeats data row 2 (file line 3)"),
    ("near_duplicates", {"near_duplicates": {"policy": "error", "threshold": 0.6}}, "data row 12 (file line 13)"),
    ("overlap", {"overlap": "error"}, "test data row 3 (file line 4); train data row 7 (file line 8)"),
])
def test_error_policy_raises_naming_the_key_file_and_rows(tokenizer, planted, check, quality, rows) -> None:
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, planted, **quality).setup("fit")
    message = str(err.value)
    assert message.startswith(f"task.data.quality.{check}:") and str(planted["train"]) in message and rows in message
    assert f"set task.data.quality.{check}=warn or drop" in message


def test_conflicting_labels_on_duplicates_are_reported(tokenizer, tmp_path, caplog) -> None:
    rows = frame(texts(12, seed=7))
    rows.loc[6] = [rows.text[0], "beta"]  # data row 7 repeats data row 1 (alpha) with another label
    rows.loc[9] = [rows.text[3], "alpha"]  # the same label (row 4 is alpha): no conflict
    files = {"train": write(tmp_path, rows), "test": write(tmp_path, frame(texts(6, seed=8)), "test.csv")}
    dm = datamodule(tokenizer, files, min_class_count={"policy": "off"})
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert counts(dm, "train")["duplicates"] == 1 + 1
    assert counts(dm, "train")["conflicting_duplicates"] == 1
    assert ("1 groups of identical rows in split 'train'" in caplog.text
            and "data rows 1, 7 (file lines 2, 8) with ['alpha', 'beta']" in caplog.text)


# --- carved splits -------------------------------------------------------------------------------
def test_carving_keeps_exact_duplicates_together(tokenizer, tmp_path) -> None:
    rows = frame(texts(60, seed=9))
    rows = pd.concat([rows, rows.iloc[:20]], ignore_index=True)  # 20 texts twice
    dm = datamodule(tokenizer, {"train": write(tmp_path, rows)})
    dm.setup("fit")
    assert dm.carved == {"validation": "grouped", "test": "grouped"}
    train = set(dm.examples["train"]["text"])
    assert not train & set(dm.examples["test"]["text"]) and not train & set(dm.examples["validation"]["text"])
    assert sum(counts(dm, s)["duplicates"] for s in ("train", "validation", "test")) == 20


def test_exact_overlap_of_a_split_carved_by_rows_is_a_warning_by_default(tokenizer, tmp_path, caplog) -> None:
    """With duplicates=off carving does not group duplicates, so copies land on both sides: auto warns (switching a
    check off does not stop a run that trained before), and overlap=error stops naming the cause."""
    rows = frame(texts(60, seed=9))
    rows = pd.concat([rows, rows.iloc[:30]], ignore_index=True)
    message = (r"task.data.quality.overlap: \d+ rows of split '(validation|test)'.*carved from "
               r"train by rows as task.data.quality.duplicates=off")
    with caplog.at_level(logging.WARNING):
        datamodule(tokenizer, {"train": write(tmp_path, rows)}, duplicates="off").setup("fit")
    assert re.search(message, caplog.text)
    with pytest.raises(DataError, match=message):
        datamodule(tokenizer, {"train": write(tmp_path, rows)}, duplicates="off", overlap="error").setup("fit")


# --- missing values ------------------------------------------------------------------------------
def missing_rows(tmp_path: Path, label: bool = True) -> dict[str, Path]:
    rows = frame(texts(12, seed=10))
    rows.loc[3, "text"] = "   "  # data row 4
    if label:
        rows.loc[7, "label"] = None  # data row 8
    return {"train": write(tmp_path, rows), "validation": write(tmp_path, frame(texts(6, seed=16)), "validation.csv"),
            "test": write(tmp_path, frame(texts(6, seed=11)), "test.csv")}


def test_missing_warn_counts_and_leaves_rows_to_the_familys_checks(tokenizer, tmp_path, caplog) -> None:
    dm = datamodule(tokenizer, missing_rows(tmp_path, label=False))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "task.data.quality.missing: 1 rows of split 'train'" in caplog.text and "data row 4 (file line 5)" in caplog.text
    assert counts(dm, "train")["missing"] == 1 and counts(dm, "train")["dropped"] == 0
    assert len(dm.examples["train"]) == 11  # task.data.empty_text=drop dropped it
    with pytest.raises(DataError, match="have no label"):  # a missing label is still refused by classification
        datamodule(tokenizer, missing_rows(tmp_path)).setup("fit")


def test_missing_drop_removes_and_counts(tokenizer, tmp_path) -> None:
    dm = datamodule(tokenizer, missing_rows(tmp_path), missing="drop")
    dm.setup("fit")
    assert counts(dm, "train")["missing"] == 2 and counts(dm, "train")["dropped"] == 2
    assert len(dm.examples["train"]) == 10


def test_missing_error_names_the_columns_and_rows(tokenizer, tmp_path) -> None:
    files = missing_rows(tmp_path)
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, files, missing="error").setup("fit")
    assert str(err.value).startswith(
        f"task.data.quality.missing: 2 rows of split 'train' ({files['train']}) have a missing or blank value: "
        "'text' in data row 4 (file line 5); 'label' in data row 8 (file line 9)")


# --- normalisation -------------------------------------------------------------------------------
def test_each_normalisation_option_is_applied_and_counted(tokenizer, tmp_path) -> None:
    base = texts(8, seed=12)
    special = [
        "\uff46\uff55\uff4c\uff4c width apple",  # nfkc: full-width letters
        "<b>bold</b> river &amp; lake",               # strip_html
        "see https://example.com/x now",              # strip_urls
        "hi @someone and @other",                     # strip_mentions
        "two  spaces\tand\na line",                   # whitespace
    ]
    files = three_splits(tmp_path, [*special, *base], texts(6, seed=17), texts(6, seed=13))
    options = dict.fromkeys(("nfkc", "strip_html", "strip_urls", "strip_mentions", "whitespace"), True)
    dm = datamodule(tokenizer, files, **options)
    dm.setup("fit")
    assert {k: v for k, v in counts(dm, "train").items() if k.startswith("normalised/")} == {
        "normalised/nfkc": 1, "normalised/strip_html": 1, "normalised/strip_urls": 1,
        "normalised/strip_mentions": 1, "normalised/whitespace": 4}  # html, url, mention leave double spaces
    assert set(dm.examples["train"]["text"]) >= {"full width apple", "bold river & lake", "see now", "hi and",
                                                 "two spaces and a line"}
    assert counts(dm, "test")["normalised/whitespace"] == 0


def test_default_settings_change_nothing_on_clean_data(tokenizer, learnable_csv) -> None:
    """The default checks on clean data (no duplicates, no extra spaces) keep every row, and carve as without them."""
    defaults = compose_train(Path("unused"), "task=csv").task.data.quality  # the yaml's: whitespace on
    assert defaults.whitespace and defaults.duplicates == "warn" and defaults.near_duplicates.policy == "warn"
    default = datamodule(tokenizer, {"train": learnable_csv}, **defaults)
    default.setup("fit")
    off = datamodule(tokenizer, {"train": learnable_csv}, **OFF)
    off.setup("fit")
    for split in ("train", "validation", "test"):
        assert default.examples[split].to_dict() == off.examples[split].to_dict()
    assert counts(default, "train")["dropped"] == 0 and counts(default, "train")["duplicates"] == 0


# --- class counts, config ------------------------------------------------------------------------
def test_per_class_counts_and_a_warning_for_a_rare_test_class(tokenizer, tmp_path, caplog) -> None:
    test = frame(texts(9, seed=14))
    test.loc[[2, 5, 8], "label"] = "alpha"  # no gamma left in test
    files = {"train": write(tmp_path, frame(texts(30, seed=15))), "test": write(tmp_path, test, "test.csv")}
    dm = datamodule(tokenizer, files, min_class_count={"count": 2})
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert {k: v for k, v in counts(dm, "test").items() if k.startswith("class/")} == \
        {"class/alpha": 6, "class/beta": 3, "class/gamma": 0}
    assert "split 'test' has fewer than 2 examples of 1 classes: gamma 0" in caplog.text
    with pytest.raises(DataError, match="min_class_count"):
        datamodule(tokenizer, files, min_class_count={"policy": "error", "count": 4}).setup("fit")


@pytest.mark.parametrize(("quality", "key"), [
    ({"duplicates": "remove"}, "task.data.quality.duplicates"),
    ({"overlap": "sometimes"}, "task.data.quality.overlap"),
    ({"near_duplicates": {"threshold": 1.5}}, "task.data.quality.near_duplicates.threshold"),
    ({"near_duplicates": {"num_perm": 4}}, "task.data.quality.near_duplicates.num_perm"),
    ({"near_duplicates": {"shingles": 3}}, "task.data.quality.near_duplicates.shingles"),
    ({"min_class_count": {"policy": "drop"}}, "task.data.quality.min_class_count.policy"),
    ({"strip_urls": "yes"}, "task.data.quality.strip_urls"),
    ({"dedupe": True}, "task.data.quality.dedupe"),
])
def test_bad_quality_options_name_the_key(quality, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        QualityConfig.parse(quality)


# --- metrics.json --------------------------------------------------------------------------------
def test_counts_land_in_metrics_json(tiny_bert, tmp_path) -> None:
    rows = make_rows(90, seed=3)
    rows = pd.concat([rows, rows.iloc[:6]], ignore_index=True)  # 6 exact duplicates
    data = write(tmp_path, rows, "topics.csv")
    out = tmp_path / "run"
    cfg = compose_train(out, *tiny_overrides(tiny_bert, data, "trainer.max_epochs=1", "task.data.quality.strip_urls=true"))
    from tunelab.train import run

    returned = run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data/train"] == returned["data/train"]
    flat = flatten_metrics(metrics)
    assert sum(flat[f"data/{s}/duplicates"] for s in ("train", "validation", "test")) == 6
    assert flat["data/train/normalised/strip_urls"] == 0 and flat["data/train/dropped"] == 0
    assert flat["data/test/overlap/train"] == 0  # carving kept the duplicates together
    assert sum(flat[f"data/{s}/class/{c}"] for s in ("train", "validation", "test") for c in ("alpha", "beta", "gamma")) == 96
    assert set(metrics["data"]) == {"train", "validation", "test"} and sum(metrics["data"].values()) == 96


def test_a_bare_off_in_yaml_turns_a_check_off() -> None:
    """YAML (and Hydra's command line) read ``duplicates=off`` as false: it must mean off, not warn."""
    config = QualityConfig.parse({"missing": False, "duplicates": False, "overlap": False, "near_duplicates": False})
    assert (config.missing, config.duplicates, config.overlap, config.near) == ("off", "off", "off", False)
