"""Sequence-to-sequence data (summarization, translation): a source text and a target text per row.

Sources come from two columns (``source_column``/``target_column``) or, for Hub translation pairs
such as WMT16, from one column of ``{language: text}`` dicts (``translation_column`` with
``source_lang``/``target_lang``). Targets are tokenized with ``text_target`` (the target-side
tokenizer for Marian, mBART and NLLB), and padded with ``IGNORE_INDEX`` by ``DataCollatorForSeq2Seq``; the
source and reference texts travel in the batch's ``meta`` for metrics and samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import datasets
from transformers import DataCollatorForSeq2Seq

from tunelab.batch import IGNORE_INDEX, with_meta
from tunelab.data.base import Column, TaskDataModule
from tunelab.data.checks import blank, drop_empty, require_columns
from tunelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCE, REFERENCE = "source_text", "reference_text"  # text columns kept next to the features


class Seq2SeqDataModule(TaskDataModule):
    """Source -> target pairs for encoder-decoder models.

    Args:
        source_column, target_column: text columns; ``target_column=None`` for unlabelled data
            (prediction only).
        translation_column: a column of ``{language: text}`` dicts (Hub translation datasets); the
            source and target are its ``source_lang`` and ``target_lang`` entries.
        source_lang, target_lang: language codes, also given to tokenizers that take them
            (``tokenizer.src_lang``/``tgt_lang`` of mBART, NLLB, M2M100: use their codes, e.g. ``en_XX``).
        source_prefix: text put before every source, e.g. T5's ``"summarize: "``.
        max_length: source truncation length in tokens; ``max_target_length`` for targets.
        **kwargs: see ``TaskDataModule``.
    """

    columns = (
        Column("source_column", "the source text"),
        Column("target_column", "the reference text (metrics are computed when present)", target=True),
        Column("translation_column", "{language: text} pairs (Hub translation datasets)"),
    )

    def __init__(
        self,
        *args: Any,
        source_column: str = "source",
        target_column: str | None = "target",
        translation_column: str | None = None,
        source_lang: str | None = None,
        target_lang: str | None = None,
        source_prefix: str | None = None,
        max_target_length: int = 64,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if translation_column and not (source_lang and target_lang):
            raise ConfigError(
                f"task.data.translation_column={translation_column} needs task.data.source_lang and task.data.target_lang "
                "(the keys of its {language: text} dicts)"
            )
        self.source_column = source_column
        self.target_column = target_column
        self.translation_column = translation_column
        self.source_lang, self.target_lang = source_lang, target_lang
        self.source_prefix = source_prefix or ""
        self.max_target_length = max_target_length
        self._set_tokenizer_languages()

    def _set_tokenizer_languages(self) -> None:
        """Multilingual tokenizers (mBART, NLLB, M2M100) mark the language with special tokens."""
        for attr, lang in (("src_lang", self.source_lang), ("tgt_lang", self.target_lang)):
            if lang and hasattr(self.tokenizer, attr):
                setattr(self.tokenizer, attr, lang)

    def module_kwargs(self) -> dict[str, Any]:
        generation: dict[str, Any] = {}
        if self.target_lang and hasattr(self.tokenizer, "tgt_lang"):
            token_id = self.tokenizer.convert_tokens_to_ids(self.target_lang)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise ConfigError(
                    f"task.data.target_lang={self.target_lang} is not a language code of this tokenizer "
                    f"({type(self.tokenizer).__name__}); use one of its codes, e.g. ro_RO or ron_Latn"
                )
            generation["forced_bos_token_id"] = token_id  # the decoder starts with the target language
        return {"tokenizer": self.tokenizer, "data_generation": generation}

    @property
    def has_targets(self) -> bool:
        return bool(self.target_column or self.translation_column)

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        if data_cfg.get("translation_column") and data_cfg["translation_column"] in columns:
            return {}
        return {"translation_column": None, **super().prediction_kwargs(data_cfg, columns, export)}

    # --- validation -----------------------------------------------------------------------------
    def _columns(self) -> dict[str, str]:
        if self.translation_column:
            return {"translation_column": self.translation_column}
        keys = {"source_column": self.source_column}
        if self.target_column:
            keys["target_column"] = self.target_column
        return keys

    def _pairs(self, columns: Mapping[str, list]) -> tuple[list[Any], list[Any] | None]:
        """Source texts and target texts (``None`` when unlabelled) of a batch of rows."""
        if self.translation_column:
            pairs = columns[self.translation_column]
            return [p.get(self.source_lang) for p in pairs], [p.get(self.target_lang) for p in pairs]
        return columns[self.source_column], columns[self.target_column] if self.target_column else None

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        require_columns(ds, self._columns(), split, where)
        if self.translation_column:
            first = ds[0][self.translation_column]
            for key, lang in (("source_lang", self.source_lang), ("target_lang", self.target_lang)):
                if not isinstance(first, Mapping) or lang not in first:
                    found = sorted(first) if isinstance(first, Mapping) else type(first).__name__
                    raise DataError(
                        f"language '{lang}' (task.data.{key}) not in column '{self.translation_column}' of split "
                        f"'{split}' of {where}; it holds {found}"
                    )
        sources, targets = self._pairs({c: ds[c] for c in self._columns().values()})
        rows = zip(sources, targets, strict=True) if targets is not None else ((s,) for s in sources)
        empty = [i for i, row in enumerate(rows) if any(blank(t) for t in row)]
        return drop_empty(ds, empty, self.empty_text, "an empty source or target", split, where, self.numbering[split])

    # --- features -------------------------------------------------------------------------------
    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        sources, targets = self._pairs(batch)
        sources = [str(s) for s in sources]
        encoded = self.tokenizer([self.source_prefix + s for s in sources], truncation=True, max_length=self.max_length,
                                 return_token_type_ids=False)
        encoded[SOURCE] = sources
        if targets is not None:
            targets = [str(t) for t in targets]
            encoded["labels"] = self.tokenizer(text_target=targets, truncation=True, max_length=self.max_target_length,
                                               return_token_type_ids=False)["input_ids"]
            encoded[REFERENCE] = targets
        return encoded

    def collate_fn(self) -> Callable:
        pad = DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of)

        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            texts = [SOURCE, REFERENCE]
            meta = {k: [f[k] for f in features] for k in texts if k in features[0]}
            batch = pad([{k: v for k, v in f.items() if k not in texts} for f in features])
            if batch.get("labels", 0) is None:  # the collator sets labels=None for unlabelled features
                del batch["labels"]
            return with_meta(batch, meta)

        return collate
