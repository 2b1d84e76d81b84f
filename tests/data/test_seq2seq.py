"""Seq2seq data: columns or translation dicts -> tokenized sources, -100-padded labels, texts in meta."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tests.seq2seq_fixtures import make_pairs, tiny_t5  # noqa: F401
from tunelab.data import Seq2SeqDataModule
from tunelab.errors import ConfigError, DataError


def datamodule(tiny_t5: Path, path: Path, **kwargs) -> Seq2SeqDataModule:  # noqa: F811
    source = {"_target_": "tunelab.data.sources.load", "data_files": {"train": str(path)}}
    return Seq2SeqDataModule(AutoTokenizer.from_pretrained(tiny_t5), source=source, batch_size=4, **kwargs)


def test_batches_hold_prefixed_sources_padded_labels_and_texts(tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "pairs.csv"
    make_pairs(40).to_csv(path, index=False)
    dm = datamodule(tiny_t5, path, source_prefix="summarize: ", max_target_length=3)
    dm.setup("fit")
    assert {s: len(d) for s, d in dm.examples.items()} == {"train": 32, "validation": 4, "test": 4}
    batch = next(iter(dm.val_dataloader()))
    tok = dm.tokenizer
    assert set(batch) == {"input_ids", "attention_mask", "labels", "meta"}
    first = batch["meta"]["source_text"][0]
    assert tok.decode(batch["input_ids"][0], skip_special_tokens=True) == "summarize: " + first
    labels = batch["labels"]
    assert labels.shape[1] <= 3 and ((labels == -100) | (labels >= 0)).all()
    lengths = (labels != -100).sum(-1)
    for row, ref in zip(range(len(labels)), batch["meta"]["reference_text"], strict=True):
        expected = tok(text_target=ref, truncation=True, max_length=3).input_ids
        assert labels[row, : lengths[row]].tolist() == expected  # truncated to max_target_length, ends with </s>
        assert (labels[row, lengths[row]:] == -100).all()


def test_translation_dicts_are_read_by_language(tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "wmt.jsonl"
    rows = make_pairs(20)
    pd.DataFrame({"translation": [{"en": s, "ro": t} for s, t in zip(rows.source, rows.target, strict=True)]}).to_json(
        path, orient="records", lines=True)
    dm = datamodule(tiny_t5, path, translation_column="translation", source_lang="en", target_lang="ro")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["meta"]["reference_text"]) <= set(rows.target) and set(batch["meta"]["source_text"]) <= set(rows.source)

    wrong = datamodule(tiny_t5, path, translation_column="translation", source_lang="en", target_lang="de")
    with pytest.raises(DataError, match=r"language 'de' \(task.data.target_lang\) not in column 'translation'.*\['en', 'ro'\]"):
        wrong.setup("fit")
    with pytest.raises(ConfigError, match=r"needs task\.data\.source_lang and task\.data\.target_lang"):
        datamodule(tiny_t5, path, translation_column="translation")


def test_missing_column_and_empty_rows(tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "pairs.csv"
    frame = make_pairs(30)
    frame.loc[[3, 7], "target"] = ""
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'summary' \(task.data.target_column\) not found .*\['source', 'target'\]"):
        datamodule(tiny_t5, path, target_column="summary").setup("fit")
    with pytest.raises(DataError, match=r"2 rows with an empty source or target .*: data rows 4, 8 \(file lines 5, 9\)"):
        datamodule(tiny_t5, path, empty_text="error").setup("fit")
    dm = datamodule(tiny_t5, path)
    dm.setup("fit")
    assert sum(len(d) for d in dm.examples.values()) == 28


def test_unlabelled_data_has_no_labels(tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "sources.csv"
    make_pairs(10)[["source"]].to_csv(path, index=False)
    dm = datamodule(tiny_t5, path, target_column=None, splits={"test": "train"})
    dm.setup("predict")
    assert not dm.has_targets
    batch = next(iter(dm.predict_dataloader()))
    assert "labels" not in batch and "reference_text" not in batch["meta"]


class _LanguageTokenizer:
    """Stands in for mBART/NLLB tokenizers: they carry src_lang/tgt_lang and language-code tokens."""

    src_lang = tgt_lang = None
    unk_token_id = 3

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"en_XX": 10, "ro_RO": 11}.get(token, self.unk_token_id)


def test_multilingual_tokenizers_get_languages_and_forced_bos() -> None:
    tok = _LanguageTokenizer()
    dm = Seq2SeqDataModule(tok, source={}, source_lang="en_XX", target_lang="ro_RO")
    assert (tok.src_lang, tok.tgt_lang) == ("en_XX", "ro_RO")
    assert dm.module_kwargs()["data_generation"] == {"forced_bos_token_id": 11}
    with pytest.raises(ConfigError, match="target_lang=ro is not a language code"):
        Seq2SeqDataModule(_LanguageTokenizer(), source={}, source_lang="en", target_lang="ro").module_kwargs()
