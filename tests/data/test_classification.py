"""Classification data: validation errors name the file/column/row; splits, labels, batching."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from transformers import PreTrainedTokenizerBase

from tests.conftest import make_rows
from tunelab.data import ClassificationDataModule
from tunelab.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def datamodule(tokenizer: PreTrainedTokenizerBase, train: Path, **kwargs) -> ClassificationDataModule:
    source = {"_target_": "tunelab.data.sources.load", "path": "csv", "data_files": {"train": str(train)}}
    source.update(kwargs.pop("source", {}))
    return ClassificationDataModule(tokenizer, source=source, **kwargs)


def write(tmp_path: Path, frame: pd.DataFrame, name: str = "train.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_missing_text_column_names_column_file_and_found_columns(tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path, make_rows(20).rename(columns={"text": "sentence"}))
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path).setup("fit")
    message = str(err.value)
    assert "'text' (task.data.text_column)" in message and str(path) in message and "['sentence', 'label']" in message


def test_missing_label_column(tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path, make_rows(20))
    with pytest.raises(DataError, match=r"'stars' \(task.data.label_column\) not found .* columns found: \['text', 'label'\]"):
        datamodule(tokenizer, path, label_column="stars").setup("fit")


def test_label_outside_declared_set_names_rows_and_values(tokenizer, tmp_path: Path) -> None:
    frame = make_rows(30)
    frame.loc[[4, 17], "label"] = "delta"
    path = write(tmp_path, frame)
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path, labels=["alpha", "beta", "gamma"]).setup("fit")
    message = str(err.value)
    # frame rows 4 and 17: data rows 5 and 18 of the csv, after its header line
    assert "2 rows" in message and "data rows 5, 18 (file lines 6, 19) with values ['delta']" in message
    assert "['alpha', 'beta', 'gamma'] (task.data.labels)" in message and str(path) in message


def test_empty_split_and_missing_file(tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path, make_rows(0))
    with pytest.raises(DataError, match=r"split 'train' is empty \(0 rows\)"):
        datamodule(tokenizer, path).setup("fit")
    with pytest.raises(DataError, match=r"not found: .*nope.csv \(task.data.source.data_files.train\)"):
        datamodule(tokenizer, tmp_path / "nope.csv").setup("fit")


def test_undecodable_text_names_file_line_and_encoding_to_set(tokenizer, tmp_path: Path) -> None:
    frame = make_rows(30)
    frame.loc[5, "text"] = "a nice caf\xe9 apple"
    path = tmp_path / "latin.csv"
    frame.to_csv(path, index=False, encoding="latin-1")
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path).setup("fit")
    assert f"{path}: line 7" in str(err.value) and "task.data.source.encoding=latin-1" in str(err.value)
    dm = datamodule(tokenizer, path, source={"encoding": "latin-1"})
    dm.setup("fit")
    texts = [t for d in dm.examples.values() for t in d["text"]]
    assert "a nice caf\xe9 apple" in texts


def test_empty_text_dropped_with_count_or_error(tokenizer, tmp_path: Path, caplog) -> None:
    frame = make_rows(30)
    frame.loc[[3, 8], "text"] = ["", "   "]
    path = write(tmp_path, frame)
    dm = datamodule(tokenizer, path, empty_text="drop", val_size=4, test_size=4)
    dm.setup("fit")
    assert sum(len(d) for d in dm.examples.values()) == 28
    assert "dropped 2 rows with empty text from split 'train'" in caplog.text
    assert "data rows 4, 9 (file lines 5, 10)" in caplog.text  # frame rows 3 and 8
    with pytest.raises(DataError, match=r"2 rows with empty text in split 'train' .*: data rows 4, 9 \(file lines 5, 10\) "
                                        r"\(set task.data.empty_text=drop"):
        datamodule(tokenizer, path, empty_text="error").setup("fit")


def test_carved_splits_are_stratified_and_fixed_by_data_seed(tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path, make_rows(300))
    dm = datamodule(tokenizer, path, val_size=0.1, test_size=0.2)
    dm.setup("fit")
    sizes = {s: len(d) for s, d in dm.examples.items()}
    assert sizes == {"train": 210, "test": 60, "validation": 30}
    assert pd.Series(dm.examples["test"]["label"]).value_counts().tolist() == [20, 20, 20]
    again = datamodule(tokenizer, path, val_size=0.1, test_size=0.2)
    again.setup("fit")
    assert again.examples["test"]["text"] == dm.examples["test"]["text"]


def test_labels_inferred_sorted_and_numeric_labels_sorted_numerically(tokenizer, tmp_path: Path) -> None:
    frame = make_rows(60)
    dm = datamodule(tokenizer, write(tmp_path, frame))
    dm.setup("fit")
    assert dm.labels == ["alpha", "beta", "gamma"]
    frame["label"] = frame["label"].map({"alpha": 10, "beta": 2, "gamma": 1})
    dm = datamodule(tokenizer, write(tmp_path, frame, "numeric.csv"))
    dm.setup("fit")
    assert dm.labels == ["1", "2", "10"]


def test_batches_are_dynamically_padded_and_grouped_by_length(tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path, make_rows(2000))
    dm = datamodule(tokenizer, path, batch_size=16)
    dm.setup("fit")
    real = fed = 0
    for batch in dm.train_dataloader():
        longest = int(batch["attention_mask"].sum(1).max())
        assert batch["input_ids"].shape[1] == longest  # padded to the batch, not to max_length
        real += int(batch["attention_mask"].sum())
        fed += batch["attention_mask"].numel()
    assert real / fed > 0.95, real / fed
    plain = datamodule(tokenizer, path, batch_size=16, group_by_length=False)
    plain.setup("fit")
    mask = [b["attention_mask"] for b in plain.train_dataloader()]
    assert sum(int(m.sum()) for m in mask) / sum(m.numel() for m in mask) < real / fed


def test_text_pairs_are_encoded_together(tokenizer, tmp_path: Path) -> None:
    frame = make_rows(40)
    frame["other"] = frame["text"].str.upper()
    dm = datamodule(tokenizer, write(tmp_path, frame), text_pair_column="other")
    dm.setup("fit")
    ids = dm.features["train"][0]["input_ids"]
    assert ids.count(tokenizer.sep_token_id) == 2
    assert set(dm.features["train"][0]["token_type_ids"]) == {0, 1}
