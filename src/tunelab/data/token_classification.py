"""Token classification (NER, chunking, POS): a sentence's words and one tag per word.

Rows hold two list columns, the words (``tokens``) and their tags (``tags``: strings, or ids of a
``ClassLabel`` sequence as in CoNLL-2003 on the Hub). Words are tokenized with
``is_split_into_words``; the first sub-token of each word carries its tag and the others are
ignored (``IGNORE_INDEX``), or carry it too with ``label_all_tokens`` (a ``B-`` tag continued as
``I-``). Scores are per word either way.

A sentence longer than ``max_length`` tokens is cut into windows overlapping by ``stride`` tokens,
not truncated; each word belongs to exactly one window (the one where it sits farthest from an
edge), so every word is trained on and scored once. Windows carry, under the batch's ``META``, their
sentence (``example_id``), the words they score (``word_ids``, ``positions`` of their first
sub-tokens, -1 for a word with no sub-token at all) and those words' texts and gold tags.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from tunelab.batch import IGNORE_INDEX, with_meta
from tunelab.data.base import Column, TaskDataModule, export_labels
from tunelab.data.checks import MAX_ROWS_SHOWN, drop_empty, require_columns, require_fast_tokenizer
from tunelab.data.sources import Source
from tunelab.errors import ConfigError, DataError
from tunelab.metrics.entities import SCHEMES, infer_scheme

log = logging.getLogger(__name__)

META_COLUMNS = ("example_id", "word_ids", "positions", "words", "word_tags")
PREFIXES = {"IOB1": "BI", "IOB2": "BI", "BIOES": "BIES"}
CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio", ".bioes", ".tsv")


def tag_parts(tag: str) -> tuple[str, str]:
    """``("B", "PER")`` for ``B-PER``; ``("O", "")`` for ``O``."""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


@dataclass
class TokenClassificationCollator:
    """Pads inputs and labels (with ``IGNORE_INDEX``); moves the word bookkeeping to ``META``."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        self.pad = DataCollatorForTokenClassification(self.tokenizer, label_pad_token_id=IGNORE_INDEX,
                                                      pad_to_multiple_of=self.pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        meta = {k: [f[k] for f in features] for k in META_COLUMNS if k in features[0]}
        batch = self.pad([{k: v for k, v in f.items() if k not in META_COLUMNS} for f in features])
        return with_meta(batch, meta)


class TokenClassificationDataModule(TaskDataModule):
    """Sentences of words with one tag each.

    Args:
        tokens_column: the column of word lists.
        tags_column: the column of tag lists (strings or ``ClassLabel`` ids); ``None`` for untagged data.
        labels: the tag set in id order; ``None`` takes the ``ClassLabel`` names, else the tags of train
            (``O`` first, then by entity type).
        tag_scheme: ``IOB1``, ``IOB2`` or ``BIOES``; ``auto`` infers it from the train tags (and says so).
        label_all_tokens: train every sub-token of a word, not only its first.
        stride: tokens shared by consecutive windows of a sentence longer than ``max_length``.
        empty_text: a sentence without words: ``drop`` it (with a warning) or ``error``.
        **kwargs: see ``TaskDataModule``.
    """

    augment_unsupported = "inserted, swapped and deleted words would no longer line up with their tags"
    columns = (
        Column("tokens_column", "the words of each sentence (a list)"),
        Column("tags_column", "their tags (a list; metrics are computed when present)", target=True),
    )
    prediction_suffix = ".jsonl"

    def __init__(
        self,
        *args: Any,
        tokens_column: str = "tokens",
        tags_column: str | None = "tags",
        labels: Sequence[str] | None = None,
        tag_scheme: str = "auto",
        label_all_tokens: bool = False,
        stride: int = 16,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if tag_scheme != "auto" and tag_scheme not in SCHEMES:
            raise ConfigError(f"task.data.tag_scheme must be auto or one of {list(SCHEMES)}, got {tag_scheme!r}")
        if not 0 <= stride < self.max_length // 2:
            raise ConfigError(f"task.data.stride ({stride}) must be >= 0 and below half of task.data.max_length "
                              f"({self.max_length})")
        require_fast_tokenizer(self.tokenizer, "token classification", "word alignment")
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.labels: list[str] | None = [str(t) for t in labels] if labels is not None else None
        self.tag_scheme = tag_scheme
        self.label_all_tokens = label_all_tokens
        self.stride = stride
        if self.labels is not None:
            self._check_labels(self.labels, "task.data.labels")

    def module_kwargs(self) -> dict[str, Any]:
        return {"labels": self.labels, "tag_scheme": None if self.tag_scheme == "auto" else self.tag_scheme}

    @property
    def has_targets(self) -> bool:
        return bool(self.tags_column)

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = super().prediction_kwargs(data_cfg, columns, export)
        if labels := export_labels(export):
            kwargs["labels"] = labels
        return kwargs

    @classmethod
    def prediction_source(cls, data_file: str, data_cfg: Mapping[str, Any], encoding: str) -> Source:
        """CoNLL files (.conll, .txt, .iob, ...) as the run read them; others (jsonl, parquet) as tables."""
        from tunelab.data.sources.conll import conll

        if Path(data_file).suffix not in CONLL_SUFFIXES:
            return super().prediction_source(data_file, data_cfg, encoding)
        source = data_cfg.get("source") or {}
        options = {k: source[k] for k in ("token_column", "tag_column", "delimiter") if k in source}
        return conll({"test": data_file}, encoding=encoding, **options)

    # --- validation -----------------------------------------------------------------------------
    def _check_labels(self, labels: Sequence[str], where: str) -> None:
        scheme = PREFIXES.get(self.tag_scheme, "BIES")
        bad = [t for t in labels if t != "O" and (tag_parts(t)[0] not in scheme or not tag_parts(t)[1])]
        if bad:
            raise DataError(f"tags {bad[:MAX_ROWS_SHOWN]} ({where}) are not O or {'/'.join(scheme)}-<type> "
                            f"(task.data.tag_scheme={self.tag_scheme})")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where} lists a tag twice: {sorted(t for t, n in Counter(labels).items() if n > 1)}")

    def _tag_strings(self, ds: datasets.Dataset) -> list[list[Any]]:
        feature = ds.features[self.tags_column]
        inner = getattr(feature, "feature", None)
        if isinstance(feature, list) and feature:
            inner = feature[0]
        values = ds[self.tags_column]
        if isinstance(inner, datasets.ClassLabel):
            if self.labels is None:
                self.labels = list(inner.names)
            return [[inner.names[v] if 0 <= v < inner.num_classes else None for v in tags] for tags in values]
        return [[None if t is None else str(t) for t in tags] if isinstance(tags, list) else tags for tags in values]

    def _require_lists(self, ds: datasets.Dataset, column: str, key: str, split: str, where: str) -> None:
        bad = [i for i, v in enumerate(ds[column]) if not isinstance(v, list)]
        if bad:
            raise DataError(f"column '{column}' (task.data.{key}) of split '{split}' in {where} must hold a list per "
                            f"row; {self.rows(ds, split, bad)} hold {type(ds[bad[0]][column]).__name__}")

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        tags_key = {"tags_column": self.tags_column} if self.tags_column else {}
        require_columns(ds, {"tokens_column": self.tokens_column, **tags_key}, split, where)
        self._require_lists(ds, self.tokens_column, "tokens_column", split, where)
        empty = [i for i, words in enumerate(ds[self.tokens_column]) if not words]
        ds = drop_empty(ds, empty, self.empty_text, "an empty sentence (no words)", split, where, self.numbering[split])
        if not self.tags_column:
            return ds
        self._require_lists(ds, self.tags_column, "tags_column", split, where)
        tags = self._tag_strings(ds)
        words = ds[self.tokens_column]
        mismatch = [i for i, (w, t) in enumerate(zip(words, tags, strict=True)) if len(w) != len(t)]
        if mismatch:
            i = mismatch[0]
            raise DataError(
                f"{len(mismatch)} rows in split '{split}' of {where} have a different number of words "
                f"('{self.tokens_column}') and tags ('{self.tags_column}'): {self.rows(ds, split, mismatch)}; "
                f"e.g. {self.rows(ds, split, [i])}: {len(words[i])} words, {len(tags[i])} tags"
            )
        if self.labels is None:
            if split != "train":
                raise RuntimeError("tags are inferred from the train split first")
            self.labels = self._infer_labels(tags)
            self._check_labels(self.labels, f"the tags of split 'train' in {where}")
        if self.tag_scheme == "auto" and split == "train":
            self.tag_scheme = infer_scheme(tags)
            log.info("tag scheme inferred from train: %s (declare task.data.tag_scheme to fix it)", self.tag_scheme)
        index = {tag: i for i, tag in enumerate(self.labels)}
        unknown = [i for i, row in enumerate(tags) if any(t not in index for t in row)]
        if unknown:
            seen = sorted({str(t) for i in unknown for t in tags[i] if t not in index})[:MAX_ROWS_SHOWN]
            raise DataError(
                f"{len(unknown)} rows in split '{split}' of {where} have tags outside the tag set {self.labels} "
                f"(task.data.labels): {self.rows(ds, split, unknown)} with tags {seen}"
            )
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        return ds.add_column("labels", [[index[t] for t in row] for row in tags],
                             feature=datasets.Sequence(datasets.Value("int64")))

    @staticmethod
    def _infer_labels(tags: list[list[str]]) -> list[str]:
        found = {t for row in tags for t in row} - {"O"}
        order = "BIES"
        labels = ["O", *sorted(found, key=lambda t: (tag_parts(t)[1], order.find(tag_parts(t)[0]), t))]
        log.info("tags inferred from train: %s (declare task.data.labels to fix their order)", labels)
        return labels

    # --- features -------------------------------------------------------------------------------
    def featurize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        features = ds.map(self.encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                          desc=f"Tokenizing {split}")
        windows = Counter(features["example_id"])
        cut = sum(1 for n in windows.values() if n > 1)
        if cut:
            log.warning("%d of %d sentences of split '%s' are longer than task.data.max_length=%d tokens: each was cut "
                        "into overlapping windows (task.data.stride=%d), every word scored once",
                        cut, len(windows), split, self.max_length, self.stride)
        return features

    def _continuation(self) -> list[int]:
        """Per tag id, the id that a word's later sub-tokens get with ``label_all_tokens``."""
        index = {tag: i for i, tag in enumerate(self.labels or [])}
        return [index.get(f"I-{tag_parts(t)[1]}", i) if tag_parts(t)[0] in "BS" and t != "O" else i
                for i, t in enumerate(self.labels or [])]

    def encode(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        """Sentences -> windows: inputs, ``labels`` (when tagged) and the ``META_COLUMNS``."""
        words = batch[self.tokens_column]
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length,
                             stride=self.stride, return_overflowing_tokens=True)
        samples = enc.pop("overflow_to_sample_mapping")
        owned = self._owners(enc, samples)
        tagged = "labels" in batch
        continuation = self._continuation() if tagged and self.label_all_tokens else None
        out: dict[str, list] = {k: list(v) for k, v in enc.items()}
        extra: dict[str, list] = {k: [] for k in (*META_COLUMNS, "labels")}
        aligned: dict[int, set[int]] = {}
        for i, row in enumerate(samples):
            aligned.setdefault(row, set()).update(owned[i])
        for i, row in enumerate(samples):
            mine = dict(owned[i])
            if i == 0 or samples[i - 1] != row:  # words without any sub-token: scored as O, in the first window
                mine.update({w: -1 for w in range(len(words[row])) if w not in aligned[row]})
            ids = sorted(mine)
            extra["example_id"].append(indices[row])
            extra["word_ids"].append(ids)
            extra["positions"].append([mine[w] for w in ids])
            extra["words"].append([words[row][w] for w in ids])
            if tagged:
                gold = batch["labels"][row]
                extra["word_tags"].append([gold[w] for w in ids])
                labels = [IGNORE_INDEX] * len(enc["input_ids"][i])
                for position, word in enumerate(enc.word_ids(i)):
                    if word is None or mine.get(word, -1) < 0 or position < mine[word]:
                        continue
                    if position == mine[word]:
                        labels[position] = gold[word]
                    elif continuation is not None:
                        labels[position] = continuation[gold[word]]
                extra["labels"].append(labels)
        out.update({k: v for k, v in extra.items() if v or k in META_COLUMNS[:4]})
        return out

    def _owners(self, enc: Any, samples: list[int]) -> list[dict[int, int]]:
        """Per window, ``{word: position of its first sub-token}`` for the words it scores: each word's
        first sub-token lies in one window, or in two where windows overlap; then the one where it is
        farthest from an edge owns it (ties: the earlier). A window's tokens continue the sentence's
        where the previous window's ended, less ``stride``."""
        owned: list[dict[int, int]] = [{} for _ in samples]
        best: dict[tuple[int, int], tuple[int, int, int]] = {}  # (row, word) -> (margin, window, position)
        first: dict[tuple[int, int], int] = {}  # (row, word) -> its first sub-token in the whole sentence
        start: dict[int, int] = {}  # row -> where its next window starts in the whole sentence
        for i, row in enumerate(samples):
            word_of = enc.word_ids(i)
            content = [p for p, w in enumerate(word_of) if w is not None]
            offset = start.get(row, 0)
            start[row] = offset + len(content) - self.stride
            for j, position in enumerate(content):
                key = (row, word_of[position])
                if first.setdefault(key, offset + j) != offset + j:
                    continue  # a later sub-token of the word
                margin = min(j, len(content) - 1 - j)
                if key not in best or margin > best[key][0]:
                    best[key] = (margin, i, position)
        for (_, word), (_, window, position) in best.items():
            owned[window][word] = position
        return owned

    def collate_fn(self) -> TokenClassificationCollator:
        return TokenClassificationCollator(self.tokenizer, self.pad_to_multiple_of)
