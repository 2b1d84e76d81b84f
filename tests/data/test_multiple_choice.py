"""Multiple-choice data: (batch, choices, length) batches padded to the longest choice, the context cut
first, SWAG / HellaSwag layouts, and one message naming the row for each kind of bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.conftest import build_tokenizer
from tests.mc_fixtures import as_hellaswag, as_swag, toy_rows, write_jsonl
from tunelab.batch import META
from tunelab.data.multiple_choice import MultipleChoiceDataModule
from tunelab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def datamodule(tokenizer: PreTrainedTokenizerFast, path: Path, test: Path | None = None,
               **kwargs) -> MultipleChoiceDataModule:
    files = {"train": str(path), **({"test": str(test)} if test else {})}
    source = {"_target_": "tunelab.data.sources.load", "data_files": files}
    return MultipleChoiceDataModule(tokenizer, source=source, **{"val_size": 4, "test_size": 4, **kwargs})


def unpadded(ids: list[int], mask: list[int]) -> list[int]:
    return [i for i, m in zip(ids, mask, strict=True) if m]


def test_batches_are_rows_by_choices_padded_to_the_longest_choice(tokenizer, tmp_path: Path) -> None:
    rows = toy_rows(40, seed=1)
    rows[30]["choices"][2] = "apple orange banana cherry grape melon river ocean"  # one long choice
    dm = datamodule(tokenizer, write_jsonl(toy_rows(10), tmp_path / "train.jsonl"),
                    test=write_jsonl(rows, tmp_path / "test.jsonl"), val_size=2, eval_batch_size=8)
    dm.setup("fit")
    assert dm.module_kwargs() == {"num_choices": 4}  # from the first row
    examples = dm.examples["test"]
    batches = list(dm.test_dataloader())
    assert sum(len(b["labels"]) for b in batches) == len(examples)
    for batch in batches:
        rows_in, choices, length = batch["input_ids"].shape
        assert choices == 4 and batch["attention_mask"].shape == batch["token_type_ids"].shape == (rows_in, 4, length)
        assert batch["labels"].shape == (rows_in,) and batch["labels"].dtype == torch.long
        assert batch["attention_mask"].sum(-1).max() == length  # padded to the batch's longest choice, no further
        for i, row in enumerate(batch[META]["example_id"]):
            example = examples[row]
            assert batch["labels"][i] == example["labels"] == example["label"]
            assert batch[META]["context"][i] == example["context"] and batch[META]["choices"][i] == example["choices"]
            for c, ending in enumerate(example["choices"]):
                ids, mask = batch["input_ids"][i, c].tolist(), batch["attention_mask"][i, c].tolist()
                assert unpadded(ids, mask) == tokenizer(example["context"], ending)["input_ids"]
                assert all(t == tokenizer.pad_token_id for t, m in zip(ids, mask, strict=True) if not m)
    # longest rows first, a row as long as its longest choice: little padding in every batch
    longest = [int(b["attention_mask"][i].sum(-1).max()) for b in batches for i in range(len(b["labels"]))]
    assert longest == sorted(longest, reverse=True) and longest[0] > longest[-1]
    assert batches[0][META]["example_id"][0] == 30
    assert META not in next(iter(dm.train_dataloader()))  # training batches carry no bookkeeping


def test_the_context_is_cut_first_and_a_too_long_ending_with_it(tokenizer, tmp_path: Path, caplog) -> None:
    rows = [{"context": "apple orange banana cherry grape melon river ocean", "choices": ["sea the", "gear a"], "label": 0},
            {"context": "apple orange", "choices": ["sea the lake pond stream river ocean engine", "gear"], "label": 1}]
    dm = datamodule(tokenizer, write_jsonl(rows * 5, tmp_path / "mc.jsonl"), max_length=8)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    seen = set()
    for features, example in zip(dm.features["train"], dm.examples["train"], strict=True):
        context = tokenizer(example["context"], add_special_tokens=False)["input_ids"]
        for ids, ending in zip(features["input_ids"], example["choices"], strict=True):
            whole = tokenizer(ending, add_special_tokens=False)["input_ids"]
            assert len(ids) == min(8, len(context) + len(whole) + 3) and ids[1:3] == context[:2]
            if len(whole) < 5:  # room for the ending and some context: the ending is kept whole, the context cut
                assert ids[-len(whole) - 1 : -1] == whole
                seen.add("context cut" if len(context) + len(whole) + 3 > 8 else "whole")
            else:  # the ending alone leaves no room for the context: both are cut (longest_first)
                assert ids[1:4] == [*context, tokenizer.sep_token_id] and ids[4:7] == whole[:3]
                seen.add("both cut")
    assert seen == {"context cut", "whole", "both cut"}
    assert "choices are 5 tokens or longer without the context" in caplog.text


def test_swag_layout_puts_the_question_before_every_ending(tokenizer, tmp_path: Path) -> None:
    rows = [as_swag(r) for r in toy_rows(12, seed=2)]
    dm = datamodule(tokenizer, write_jsonl(rows, tmp_path / "swag.jsonl"), context_column="sent1",
                    question_column="sent2", choices_column=None, ending_columns="ending0, ending1,ending2,ending3")
    dm.setup("fit")
    example, features = dm.examples["validation"][0], dm.features["validation"][0]
    assert features["choices"] == [f"the {example[f'ending{i}']}" for i in range(4)]
    assert features["input_ids"][3] == tokenizer(example["sent1"], f"the {example['ending3']}")["input_ids"]
    assert features["labels"] == example["label"]


def test_hellaswag_string_labels_are_choice_indices(tokenizer, tmp_path: Path) -> None:
    rows = [as_hellaswag(r) for r in toy_rows(12, seed=3)]
    dm = datamodule(tokenizer, write_jsonl(rows, tmp_path / "hs.jsonl"), context_column="ctx", choices_column="endings")
    dm.setup("fit")
    labels = [*dm.examples["train"]["labels"], *dm.examples["validation"]["labels"], *dm.examples["test"]["labels"]]
    assert sorted(labels) == sorted(int(r["label"]) for r in rows)


def test_a_row_with_another_number_of_choices_is_named(tokenizer, tmp_path: Path) -> None:
    rows = toy_rows(10)
    rows[3]["choices"] = ["apple the", "gear a", "river of"]
    with pytest.raises(DataError, match=r"1 rows in split 'train' of .*mc.jsonl do not have task.data.num_choices=4 "
                                        r"\(inferred from the first row of split 'train'.*\) endings in column 'choices' "
                                        r"\(task.data.choices_column\): line 4; e.g. line 4 has 3: \['apple the'"):
        datamodule(tokenizer, write_jsonl(rows, tmp_path / "mc.jsonl")).setup("fit")
    with pytest.raises(DataError, match=r"num_choices=3 endings .*: lines 1, 2, 3, 5, 6 and 4 more"):
        datamodule(tokenizer, tmp_path / "mc.jsonl", num_choices=3).setup("fit")


@pytest.mark.parametrize("label,message", [
    (4, r"label in 'label' \(task.data.label_column\) outside 0..3 \(task.data.num_choices=4 choices, counted from 0\): "
        r"line 6 with values 4"),
    (-1, r"outside 0..3 .*: line 6 with values -1"),
    ("b", r"label in 'label' \(task.data.label_column\) that is not the index of a choice \(an integer 0..3\): "
          r"line 6 with values 'b'"),
    (1.5, r"not the index of a choice .*: line 6 with values 1.5"),
    (True, r"not the index of a choice .*: line 6 with values True"),
    (None, r"not the index of a choice .*: line 6 with values None"),
])
def test_a_bad_label_is_named_with_its_row_and_value(tokenizer, tmp_path: Path, label, message: str) -> None:
    rows = toy_rows(10)
    rows[5]["label"] = label
    with pytest.raises(DataError, match=message):
        datamodule(tokenizer, write_jsonl(rows, tmp_path / "mc.jsonl")).setup("fit")


def test_integral_and_digit_labels_are_accepted(tokenizer, tmp_path: Path) -> None:
    rows = toy_rows(10)
    for row, label in zip(rows, [2.0, " 3", "0", 1] * 3, strict=False):
        row["label"] = label
    dm = datamodule(tokenizer, write_jsonl(rows, tmp_path / "mc.jsonl"), val_size=1, test_size=1)
    dm.setup("fit")
    assert sorted(dm.examples["train"]["labels"]) == sorted([2, 3, 0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("blank", ["context", "choice"])
def test_empty_text_is_dropped_or_an_error_naming_the_row(tokenizer, tmp_path: Path, caplog, blank: str) -> None:
    rows = toy_rows(12)
    if blank == "context":
        rows[2]["context"] = "  "
    else:
        rows[2]["choices"][1] = ""
    path = write_jsonl(rows, tmp_path / "mc.jsonl")
    with pytest.raises(DataError, match=r"1 rows with an empty context or choice in split 'train' of .*mc.jsonl: line 3 "
                                        r"\(set task.data.empty_text=drop to skip them\)"):
        datamodule(tokenizer, path, empty_text="error").setup("fit")
    dm = datamodule(tokenizer, path, empty_text="drop", val_size=1, test_size=1)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "dropped 1 rows with an empty context or choice from split 'train'" in caplog.text and "line 3" in caplog.text
    assert len(dm.examples["train"]) == 9 and rows[2]["context"] not in dm.examples["train"]["context"]


def test_column_problems_name_the_key(tokenizer, tmp_path: Path) -> None:
    rows = toy_rows(10)
    path = write_jsonl(rows, tmp_path / "mc.jsonl")
    with pytest.raises(DataError, match=r"column 'options' \(task.data.choices_column\) not found .* columns found: "
                                        r"\['context', 'choices', 'label'\]"):
        datamodule(tokenizer, path, choices_column="options").setup("fit")
    with pytest.raises(DataError, match=r"column 'label' \(task.data.context_column\) .* holds numbers"):
        datamodule(tokenizer, path, context_column="label").setup("fit")
    with pytest.raises(DataError, match=r"column 'context' \(task.data.choices_column\) .* must hold a list of endings "
                                        r"per row; lines 1, 2, 3, 4, 5 and 5 more hold str"):
        datamodule(tokenizer, path, choices_column="context").setup("fit")


def test_config_mistakes_are_one_message(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "unused.jsonl"
    with pytest.raises(ConfigError, match=r"set one of task.data.choices_column .* and task.data.ending_columns"):
        datamodule(tokenizer, path, ending_columns=["ending0", "ending1"])
    with pytest.raises(ConfigError, match=r"set one of"):
        datamodule(tokenizer, path, choices_column=None)
    with pytest.raises(ConfigError, match=r"task.data.num_choices=3, but task.data.ending_columns names 2 columns"):
        datamodule(tokenizer, path, choices_column=None, ending_columns=["a", "b"], num_choices=3)
    with pytest.raises(ConfigError, match=r"task.data.num_choices must be an integer >= 2 or null, got 1"):
        datamodule(tokenizer, path, num_choices=1)
