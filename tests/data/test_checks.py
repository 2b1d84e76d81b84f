"""Bad input files and values get one message naming the file, the column and the rows, numbered as in
the user's file (``tunelab.data.checks``) and counted before any row is dropped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pandas as pd
import pytest
from hydra.utils import instantiate
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.conftest import make_rows
from tests.data.test_classification import datamodule, write
from tests.helpers import compose_train
from tunelab.data import ClassificationDataModule, QuestionAnsweringDataModule
from tunelab.data.checks import ROW, RowNumbering
from tunelab.data.classification import REGRESSION_OVERRIDES
from tunelab.data.sources import Source
from tunelab.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_bert)


def file_line(path: Path, marker: str) -> int:
    """The oracle: the line of ``path`` (from 1) where ``marker`` is."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if marker in line)


# --- unreadable files --------------------------------------------------------------------------
def test_zero_byte_csv_names_the_file(tokenizer, tmp_path: Path) -> None:  # was a DatasetGenerationError
    path = tmp_path / "train.csv"
    path.touch()
    with pytest.raises(DataError, match=rf"data file for split 'train' is empty \(0 bytes\): {path} "
                                        r"\(task.data.source.data_files.train\)"):
        datamodule(tokenizer, path).setup("fit")


def test_malformed_jsonl_line_names_the_file_and_line(tokenizer, tmp_path: Path) -> None:  # was DatasetGenerationError
    path = tmp_path / "train.jsonl"
    good = [json.dumps({"text": t, "label": label}) for t, label in make_rows(6).itertuples(index=False)]
    path.write_text("\n".join([*good[:3], "", '{"text": "apple pie" "label": "alpha"}', *good[3:]]) + "\n")
    with pytest.raises(DataError, match=rf"^{path}: line 5 is not valid JSON: Expecting ',' delimiter \(column 22\)"):
        datamodule(tokenizer, path, source={"path": "json"}).setup("fit")


def test_csv_row_with_too_many_fields_names_the_line(tokenizer, tmp_path: Path) -> None:  # was DatasetGenerationError
    path = tmp_path / "train.csv"
    path.write_text("text,label\napple river,alpha\nriver, ocean,beta\n")
    with pytest.raises(DataError, match=rf"^{path}: line 3 has 3 fields, the header has 2"):
        datamodule(tokenizer, path).setup("fit")


def test_train_too_small_to_carve_says_how_many_rows_are_needed(tokenizer, tmp_path: Path) -> None:  # was sklearn's
    path = write(tmp_path, make_rows(3))
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path, val_size=2, test_size=0.5).setup("fit")
    message = str(err.value)
    assert f"split 'train' has 3 usable rows ({path})" in message
    assert "2 test (task.data.test_size) and 2 validation (task.data.val_size)" in message
    assert "needs at least 5 rows" in message and "task.data.source.data_files.<split>" in message
    dm = datamodule(tokenizer, write(tmp_path, make_rows(5), "five.csv"), val_size=2, test_size=0.5)
    dm.setup("fit")  # exactly enough
    assert {s: len(d) for s, d in dm.examples.items()} == {"train": 1, "test": 2, "validation": 2}


# --- values --------------------------------------------------------------------------------------
def test_numbers_only_text_column_is_named(tokenizer, tmp_path: Path) -> None:  # was a tokenizer TypeError
    frame = make_rows(20).assign(id=range(20))
    path = write(tmp_path, frame)
    with pytest.raises(DataError, match=r"column 'id' \(task.data.text_column\) of split 'train' in .*train.csv holds "
                                        r"numbers \(int64\), not text \(e.g. 0\): set task.data.text_column to the text "
                                        r"column; columns found: \{'text': 'large_string', 'label': 'large_string', "
                                        r"'id': 'int64'\}"):
        datamodule(tokenizer, path, text_column="id").setup("fit")


def test_blank_integer_label_is_reported_missing(tokenizer, tmp_path: Path) -> None:
    """One blank cell makes pandas read the integer labels as floats (1.0, 2.0, NaN): every row used to be
    'outside the declared set'. Now only the blank one is reported, as missing, by its row in the file."""
    frame = make_rows(30).assign(label=[i % 3 + 1 for i in range(30)]).astype({"label": "object"})
    frame.loc[12, "label"] = None
    path = write(tmp_path, frame)
    assert pd.read_csv(path)["label"].dtype == float
    for labels in ([1, 2, 3], None):
        with pytest.raises(DataError) as err:
            datamodule(tokenizer, path, labels=labels).setup("fit")
        assert str(err.value) == (
            f"1 rows in split 'train' of {path} have no label in 'label' (task.data.label_column): missing label in "
            f"data row 13 (file line 14); fill them in or remove those rows")
    frame.loc[12, "label"] = 2
    dm = datamodule(tokenizer, write(tmp_path, frame), labels=[1, 2, 3])
    dm.setup("fit")
    assert dm.labels == ["1", "2", "3"] and dm.examples["train"].features["labels"].names == ["1", "2", "3"]


def test_float_labels_suggest_a_regression_that_then_trains(tokenizer, tiny_bert: Path, tmp_path: Path) -> None:
    frame = make_rows(40).assign(label=[round(i / 7, 2) for i in range(40)])
    path = write(tmp_path, frame)
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path).setup("fit")
    message = str(err.value)
    assert "holds non-integer numbers (0.14, 0.29, 0.43, 0.57, 0.71 in data rows 2, 3, 4, 5, 6 (file lines 3, 4, 5, " \
           "6, 7) and 29 more), not class labels" in message
    assert message.endswith(f"add {REGRESSION_OVERRIDES}")
    cfg = compose_train(tmp_path / "run", "task=csv", f"task.data.source.data_files.train={path}",
                        f"model.name_or_path={tiny_bert}", *REGRESSION_OVERRIDES.split())
    dm = instantiate(cfg.task.data, tokenizer=tokenizer, _recursive_=False)  # as tunelab.train does
    dm.setup("fit")
    assert type(dm).__name__ == "RegressionDataModule" and cfg.task.family == "regression"
    assert dm.examples["train"]["labels"] == pytest.approx(dm.examples["train"]["label"])


def test_singleton_inferred_classes_warn_with_their_rows(tokenizer, tmp_path: Path, caplog) -> None:
    frame = make_rows(30)
    frame.loc[[7, 20], "label"] = ["delta", "epsilon"]
    dm = datamodule(tokenizer, write(tmp_path, frame))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert ("2 of 5 inferred classes have a single row in train: 'delta' (data row 8 (file line 9)), "
            "'epsilon' (data row 21 (file line 22))") in caplog.text
    quiet = datamodule(tokenizer, write(tmp_path, make_rows(30), "fine.csv"))
    caplog.clear()
    quiet.setup("fit")
    assert "single row" not in caplog.text


# --- row numbers ---------------------------------------------------------------------------------
def test_rows_are_counted_before_dropped_rows_in_file_lines(tokenizer, tmp_path: Path) -> None:
    """A dropped empty row used to shift the rows of later messages (0-based, after the drop); a quoted
    text over two lines and a blank line (which the csv reader skips) are counted as the file has them."""
    frame = make_rows(20)
    frame.loc[2, "text"] = "apple\nriver over two lines"
    frame.loc[4, "text"] = ""
    frame.loc[11, "label"] = "delta-marker"
    path = tmp_path / "train.csv"
    text = frame.to_csv(index=False).replace("\n", "\n\n", 1)  # a blank line after the header
    path.write_text(text)
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path, labels=["alpha", "beta", "gamma"]).setup("fit")
    line = file_line(path, "delta-marker")
    assert line == 15  # header, blank line, 11 rows before it, one of them on two lines
    assert f"data row 12 (file line {line}) with values ['delta-marker']" in str(err.value)


def test_jsonl_rows_are_file_lines_blank_lines_included(tokenizer, tmp_path: Path) -> None:
    rows = [{"text": t, "label": label} for t, label in make_rows(12).itertuples(index=False)]
    rows[9]["label"] = "delta-marker"
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n\n\n" + "\n".join(json.dumps(r) for r in rows[4:]))
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path, source={"path": "json"}, labels=["alpha", "beta", "gamma"]).setup("fit")
    assert f": line {file_line(path, 'delta-marker')} with values ['delta-marker']" in str(err.value)
    assert file_line(path, "delta-marker") == 12


def test_rows_of_a_split_of_several_files_name_their_file(tokenizer, tmp_path: Path) -> None:
    first, second = write(tmp_path, make_rows(10), "a.csv"), make_rows(10, seed=1)
    second.loc[[1, 6], "label"] = "delta"
    second = write(tmp_path, second, "b.csv")
    source = {"data_files": {"train": [str(first), str(second)]}}
    with pytest.raises(DataError, match=rf": data rows 2, 7 \(file lines 3, 8\) of {second} with values \['delta'\]"):
        datamodule(tokenizer, first, source=source, labels=["alpha", "beta", "gamma"]).setup("fit")


@pytest.mark.parametrize("builder,name,rows,expected", [
    ("text", "t.txt", [0, 2], "lines 1, 3"),
    ("parquet", "t.parquet", [3], "record 4"),
    ("json", "t.json", [1, 2], "records 2, 3"),  # one JSON array
    (None, "", [3, 7], "rows at index 3, 7"),  # Hub datasets: dataset[i]
])
def test_numbering_of_other_formats(builder: str | None, name: str, rows: list[int], expected: str, tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "", "c", "d", "e"]})
    path = tmp_path / name
    if builder == "text":
        path.write_text("a\n\nc\n")
    elif builder == "parquet":
        frame.to_parquet(path)
    elif builder == "json":
        path.write_text(json.dumps(frame.to_dict("records"), indent=2))
    numbering = RowNumbering((str(path),) if builder else (), builder)
    assert numbering.describe(rows) == expected
    assert RowNumbering().describe(list(range(8))) == "rows at index 0, 1, 2, 3, 4 and 3 more"


def test_hub_rows_are_indices_and_the_hidden_column_never_leaves_the_datamodule(tokenizer) -> None:
    frame = make_rows(40)
    frame.loc[[3, 30], "label"] = "delta"
    source = Source(datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame)}), {"train": "org/set [train]"})
    with pytest.raises(DataError, match=r"org/set \[train\] have labels outside .*: rows at index 3, 30 with"):
        ClassificationDataModule(tokenizer, source=source, labels=["alpha", "beta", "gamma"]).setup("fit")
    frame.loc[[3, 30], "text"] = ""  # dropped
    source = Source(datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame)}))
    dm = ClassificationDataModule(tokenizer, source=source)
    dm.setup("fit")
    for split in dm.examples:
        assert ROW not in dm.examples[split].column_names and ROW not in dm.features[split].column_names
    assert sum(len(d) for d in dm.examples.values()) == 38


def test_qa_rows_are_numbered_in_the_file(tmp_path: Path) -> None:
    from tests.qa_fixtures import build_qa_tokenizer, capital_rows, write_rows

    rows = capital_rows(8)
    rows[5]["question"] = "  "
    path = write_rows(rows, tmp_path / "qa.csv")
    source = {"_target_": "tunelab.data.sources.load", "data_files": {"train": str(path)}}
    dm = QuestionAnsweringDataModule(build_qa_tokenizer(), source=source, max_length=64, stride=16)
    with pytest.raises(DataError, match=r"1 rows with an empty question or context \('question', 'context'\) in "
                                        r"split 'train' .*: data row 6 \(file line 7\) \(set task.data.empty_text=drop"):
        dm.setup("fit")
