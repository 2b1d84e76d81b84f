"""Sequence classification and regression data: one text (or a text pair) and a label per row."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from tunelab.data.base import Column, TaskDataModule, export_labels
from tunelab.data.checks import MAX_ROWS_SHOWN, check_texts
from tunelab.errors import DataError

log = logging.getLogger(__name__)

# What turns task=csv / task=json (classification) into a regression, as configs/task/_base/regression.yaml does.
REGRESSION_OVERRIDES = ("task.data._target_=tunelab.data.RegressionDataModule "
                        "task.module._target_=tunelab.tasks.SequenceRegressionModule task.family=regression "
                        "task.monitor=val/pearson")


def label_string(value: Any) -> str | None:
    """A label value as the text it names; None when missing (blank, NaN). Integral floats (a csv
    column of integers with a blank cell is read as floats) are written as integers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text if text.strip() else None


# The columns of a text (+ pair) classification row, also read by classification by generation.
COLUMNS = (
    Column("text_column", "the text"),
    Column("text_pair_column", "the second text of a pair"),
    Column("label_column", "the label (metrics are computed when present)", target=True),
)


@dataclass
class ClassificationCollator:
    """Pads on the right, whatever the tokenizer's ``padding_side`` (decoder checkpoints often say left, for
    generation). A decoder's classifier reads the last non-pad token either way, but one with absolute position
    embeddings (GPT-2) would number a left-padded text from the padding instead of its first token."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.tokenizer.pad(features, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                       padding_side="right", return_tensors="pt"))


class ClassificationDataModule(TaskDataModule):
    """Text (+ optional pair) classification.

    Args:
        text_column, text_pair_column, label_column: column names in the source; ``label_column=None``
            for unlabelled data (prediction only).
        labels: the declared label set, in id order; ``None`` infers it from the training split.
        **kwargs: see ``TaskDataModule``.
    """

    stratify_column = "labels"
    columns = COLUMNS
    augment_unsupported = None  # the text (and pair) of a row: both get each copy's operation

    def __init__(
        self,
        *args: Any,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str | None = "label",
        labels: Sequence[Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.text_columns = [c for c in (text_column, text_pair_column) if c]
        self.label_column = label_column
        self.labels: list[str] | None = [str(x) for x in labels] if labels is not None else None

    def module_kwargs(self) -> dict[str, Any]:
        return {"labels": self.labels}

    @property
    def has_targets(self) -> bool:
        return bool(self.label_column)

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = super().prediction_kwargs(data_cfg, columns, export)
        if labels := export_labels(export):
            kwargs["labels"] = labels
        return kwargs

    def _text_keys(self) -> dict[str, str]:
        keys = {"text_column": self.text_columns[0]}
        if len(self.text_columns) > 1:
            keys["text_pair_column"] = self.text_columns[1]
        return keys

    def _label_strings(self, ds: datasets.Dataset) -> list[str | None]:
        feature = ds.features[self.label_column]
        values = ds[self.label_column]
        if isinstance(feature, datasets.ClassLabel):  # -1: no label (e.g. hidden test labels)
            return [feature.names[v] if 0 <= v < feature.num_classes else None for v in values]
        return [label_string(v) for v in values]

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        ds = check_texts(ds, self._text_keys(), split, where, self.empty_text, self.numbering[split],
                         {"label_column": self.label_column} if self.label_column else None)
        if not self.label_column:
            return ds
        missing = [i for i, v in enumerate(self._label_strings(ds)) if v is None]
        if missing:
            raise DataError(
                f"{len(missing)} rows in split '{split}' of {where} have no label in '{self.label_column}' "
                f"(task.data.label_column): missing label in {self.rows(ds, split, missing)}; fill them in or remove those rows"
            )
        return self.encode_labels(ds, split, where)

    @staticmethod
    def _set_labels(ds: datasets.Dataset, values: list) -> datasets.Dataset:
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        return ds.add_column("labels", values)

    def _refuse_fractions(self, ds: datasets.Dataset, values: list[str], split: str, where: str) -> None:
        """Non-integer numbers outside the declared labels: a regression target, not classes."""
        feature = ds.features[self.label_column]
        if not (isinstance(feature, datasets.Value) and feature.dtype.startswith("float")):
            return
        declared = set(self.labels or ())
        fractions = [i for i, v in enumerate(values) if not v.lstrip("-").isdigit() and v not in declared]
        if fractions:
            seen = sorted({values[i] for i in fractions[:MAX_ROWS_SHOWN]})
            raise DataError(
                f"column '{self.label_column}' (task.data.label_column) of split '{split}' in {where} holds "
                f"non-integer numbers ({', '.join(seen)} in {self.rows(ds, split, fractions)}), not class labels. "
                f"For a numeric target train a regression (one output, MSE loss, as task=stsb): add "
                f"{REGRESSION_OVERRIDES}"
            )

    def encode_labels(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        """Label values -> ids in ``self.labels`` (inferred from train when not declared)."""
        values = self._label_strings(ds)
        self._refuse_fractions(ds, values, split, where)
        if self.labels is None:
            if split != "train":
                raise RuntimeError("labels are inferred from the train split first")
            self.labels = self._infer_labels(ds, values)
        index = {label: i for i, label in enumerate(self.labels)}
        bad = [i for i, v in enumerate(values) if v not in index]
        if bad:
            seen = sorted({str(values[i]) for i in bad})[:MAX_ROWS_SHOWN]
            raise DataError(
                f"{len(bad)} rows in split '{split}' of {where} have labels outside the declared set "
                f"{self.labels} (task.data.labels): {self.rows(ds, split, bad)} with values {seen}"
            )
        ds = self._set_labels(ds, [index[v] for v in values])
        return ds.cast_column("labels", datasets.ClassLabel(names=self.labels))

    def _infer_labels(self, ds: datasets.Dataset, values: list[str]) -> list[str]:
        """The sorted label set of train (numbers by value); warns about classes with a single row."""
        counts = Counter(values)
        numeric = all(v.lstrip("-").isdigit() for v in counts)
        labels = sorted(counts, key=int if numeric else str)
        log.info("labels inferred from train: %s (declare task.data.labels to fix their order)", labels)
        single = [label for label in labels if counts[label] == 1]
        if single:
            where = [f"'{label}' ({self.rows(ds, 'train', [values.index(label)])})" for label in single[:MAX_ROWS_SHOWN]]
            log.warning(
                "%d of %d inferred classes have a single row in train: %s%s. Such a class cannot be both trained on "
                "and evaluated, and held-out splits cannot be stratified; check task.data.label_column, or give more rows",
                len(single), len(labels), ", ".join(where), " and more" if len(single) > MAX_ROWS_SHOWN else "",
            )
        return labels

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[c] for c in self.text_columns]
        encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        if "labels" in batch:
            encoded["labels"] = batch["labels"]
        return encoded

    def collate_fn(self) -> ClassificationCollator:
        return ClassificationCollator(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)


class RegressionDataModule(ClassificationDataModule):
    """Text (+ pair) regression, e.g. STS-B similarity scores: the label column holds numbers."""

    stratify_column = None

    def module_kwargs(self) -> dict[str, Any]:
        return {}

    def encode_labels(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        raw = ds[self.label_column]
        values, bad = [], []
        for i, v in enumerate(raw):
            try:
                number = float(v)
            except (TypeError, ValueError):
                number = math.nan
            if math.isnan(number):
                bad.append(i)
            values.append(number)
        if bad:
            seen = sorted({str(raw[i]) for i in bad[:MAX_ROWS_SHOWN]})
            raise DataError(
                f"{len(bad)} rows in split '{split}' of {where} have non-numeric labels in "
                f"'{self.label_column}' (task.data.label_column): {self.rows(ds, split, bad)} with values {seen}"
            )
        return self._set_labels(ds, values).cast_column("labels", datasets.Value("float32"))
