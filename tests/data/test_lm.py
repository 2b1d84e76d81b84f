"""Language-modelling data: blocks, per-row blocks, MLM masks (fixed for evaluation), CLM labels, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from tests.conftest import make_rows
from tests.lm_fixtures import lm_lines, tiny_gpt2, write_lines  # noqa: F401
from tunelab.batch import META
from tunelab.data import ClassificationDataModule, LanguageModelingDataModule
from tunelab.errors import ConfigError, DataError


def datamodule(model: Path, data: Path, **kwargs) -> LanguageModelingDataModule:
    kwargs = {"block_size": 16, "batch_size": 4, "eval_batch_size": 4, "seed": 7, **kwargs}
    dm = LanguageModelingDataModule(AutoTokenizer.from_pretrained(model), source={
        "_target_": "tunelab.data.sources.load", "data_files": {"train": str(data)}}, **kwargs)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = lm_lines(60, seed=1)
    lines[5] = "   "  # blank lines are skipped
    lines.insert(9, "")
    return write_lines(tmp_path_factory.mktemp("lm") / "lines.txt", lines)


def batches(loader) -> list[dict]:
    return [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in loader]


def test_rows_are_concatenated_and_cut_into_blocks(tiny_bert: Path, text_file: Path) -> None:
    dm = datamodule(tiny_bert, text_file, objective="clm")
    rows = list(dm.examples["train"]["text"])
    assert len(dm.examples["train"]) + len(dm.examples["validation"]) + len(dm.examples["test"]) == 59  # 2 blank dropped
    assert all(r.endswith("\n") for r in rows)  # .txt rows keep their line breaks
    expected = list(itertools.chain.from_iterable(dm.tokenizer(rows)["input_ids"]))  # [CLS] .. [SEP] per row
    blocks = list(dm.features["train"]["input_ids"])
    assert list(itertools.chain.from_iterable(blocks)) == expected
    assert all(len(b) == 16 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 16
    assert list(dm.features["train"]["labels"]) == blocks  # CLM: the model shifts the labels itself


def test_per_row_blocks_never_span_rows_and_carry_their_row(tiny_bert: Path, text_file: Path) -> None:
    dm = datamodule(tiny_bert, text_file, group_texts=False, block_size=4, objective="clm")
    features, rows = dm.features["validation"].to_dict(), list(dm.examples["validation"]["text"])
    for i, text in enumerate(rows):
        ids = [b for b, r in zip(features["input_ids"], features["row"], strict=True) if r == i]
        assert list(itertools.chain.from_iterable(ids)) == dm.tokenizer(text)["input_ids"]
    batch = next(iter(dm.val_dataloader()))
    assert len(batch[META]["row"]) == len(batch["input_ids"]) and "row" not in batch


def test_eval_masks_are_fixed_across_epochs_and_runs(tiny_bert: Path, text_file: Path) -> None:
    dm = datamodule(tiny_bert, text_file)
    first, second = batches(dm.val_dataloader()), batches(dm.val_dataloader())
    again = batches(datamodule(tiny_bert, text_file).val_dataloader())
    other = batches(datamodule(tiny_bert, text_file, data_seed=99).val_dataloader())
    for a, b, c in zip(first, second, again, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], c["labels"])
    assert len(other) != len(first) or not all(torch.equal(a["labels"], o["labels"]) for a, o in zip(first, other, strict=True))


def test_mlm_masks_15_percent_of_ordinary_tokens(tiny_bert: Path, text_file: Path) -> None:
    dm = datamodule(tiny_bert, text_file)
    tok = dm.tokenizer
    special = torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
    masked = targets = ordinary = 0
    for batch in itertools.chain(dm.val_dataloader(), dm.test_dataloader(), dm.train_dataloader()):
        labels, inputs = batch["labels"], batch["input_ids"]
        picked = labels != -100
        assert not torch.isin(labels[picked], special).any()  # special tokens are never targets
        masked += int((inputs[picked] == tok.mask_token_id).sum())
        targets += int(picked.sum())
        ordinary += int(((batch["attention_mask"] == 1) & ~torch.isin(inputs, special)).sum())
    assert 0.11 < targets / ordinary < 0.19  # mlm_probability 0.15
    assert 0.65 < masked / targets < 0.95  # 80% of the targets read [MASK]


def test_training_masks_change_every_epoch_but_follow_the_seed(tiny_bert: Path, text_file: Path) -> None:
    dm = datamodule(tiny_bert, text_file, group_by_length=False)
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    epoch1, epoch2 = batches(loader), batches(loader)
    assert sum(len(b["labels"]) for b in epoch1) == len(dm.features["train"])
    masks1 = torch.cat([(b["labels"] != -100).flatten() for b in epoch1])
    masks2 = torch.cat([(b["labels"] != -100).flatten() for b in epoch2])
    assert masks1.shape == masks2.shape and not torch.equal(masks1, masks2)
    torch.manual_seed(0)
    same = batches(datamodule(tiny_bert, text_file, group_by_length=False).train_dataloader())
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(epoch1, same, strict=True))
    torch.manual_seed(0)
    other = batches(datamodule(tiny_bert, text_file, group_by_length=False, seed=8).train_dataloader())
    assert not all(torch.equal(a["labels"], b["labels"]) for a, b in zip(epoch1, other, strict=True))


def test_clm_padding_is_ignored_but_eos_tokens_stay_targets(tiny_gpt2: Path, tmp_path: Path) -> None:  # noqa: F811
    data = write_lines(tmp_path / "eos.txt", ["apple orange<|endoftext|>river", *lm_lines(30)])
    dm = datamodule(tiny_gpt2, data, objective="clm", block_size=64, val_size=1, test_size=1, batch_size=64)
    tok = dm.tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # GPT-2 style: pad with eos
    batch = next(iter(dm.train_dataloader()))
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert torch.equal(labels[attention == 1], ids[attention == 1])  # real tokens, eos included, are targets
    assert (labels[attention == 0] == -100).all() and (attention == 0).any()
    assert (labels == tok.eos_token_id).any()


def test_stratified_carving_holds_out_the_classification_rows(tiny_bert: Path, tmp_path: Path) -> None:
    frame = make_rows(90)
    frame["file"] = [f"doc{i}" for i in range(90)]
    path = tmp_path / "docs.csv"
    frame.to_csv(path, index=False)
    source = {"_target_": "tunelab.data.sources.load", "data_files": {"train": str(path)}}
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    clf = ClassificationDataModule(tok, source=source, labels=["alpha", "beta", "gamma"])
    lm = LanguageModelingDataModule(tok, source=source, stratify_column="label")
    clf.setup("fit"), lm.setup("fit")
    for split in ("train", "validation", "test"):
        assert list(lm.examples[split]["file"]) == list(clf.examples[split]["file"])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"text_column": "body"}, DataError, r"column 'body' \(task.data.text_column\) not found .* columns found: \['text'\]"),
        ({"block_size": 4096}, ConfigError, r"task.data.block_size=4096: .*model_max_length \(128\)"),
        ({"objective": "lm"}, ConfigError, r"task.data.objective must be one of \['mlm', 'clm'\]"),
        ({"stratify_column": "label"}, DataError, r"'label' \(task.data.stratify_column\) not found"),
    ],
)
def test_bad_settings_are_named(tiny_bert: Path, text_file: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        datamodule(tiny_bert, text_file, **kwargs)


def test_non_text_column_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    pd.DataFrame({"text": [1, 2, 3]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'text' \(task.data.text_column\) .* holds .*int64.*, not text"):
        datamodule(tiny_bert, path)


def test_mlm_needs_a_mask_token(tiny_gpt2: Path, text_file: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=r"task=mlm needs a tokenizer with a mask token.*task=clm"):
        datamodule(tiny_gpt2, text_file)


def test_text_files_load_with_the_text_builder(text_file: Path) -> None:
    from tunelab.data.sources import load

    split = load(data_files={"train": str(text_file)}).splits["train"]
    assert split.column_names == ["text"] and isinstance(split, datasets.Dataset) and len(split) == 61
