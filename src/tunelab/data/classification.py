"""Sequence classification and regression data: one text (or a text pair) and a label per row."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import datasets
from transformers import DataCollatorWithPadding

from tunelab.data.base import TaskDataModule
from tunelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MAX_ROWS_SHOWN = 5


def _rows(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:MAX_ROWS_SHOWN])
    return shown + (f" and {len(indices) - MAX_ROWS_SHOWN} more" if len(indices) > MAX_ROWS_SHOWN else "")


class ClassificationDataModule(TaskDataModule):
    """Text (+ optional pair) classification.

    Args:
        text_column, text_pair_column, label_column: column names in the source; ``label_column=None``
            for unlabelled data (prediction only).
        labels: the declared label set, in id order; ``None`` infers it from the training split.
        empty_text: ``drop`` rows whose text is empty (and say how many), or raise an ``error``.
        **kwargs: see ``TaskDataModule``.
    """

    stratify_column = "labels"

    def __init__(
        self,
        *args: Any,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str | None = "label",
        labels: Sequence[Any] | None = None,
        empty_text: Literal["drop", "error"] = "drop",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if empty_text not in ("drop", "error"):
            raise ConfigError(f"task.data.empty_text must be 'drop' or 'error', got {empty_text!r}")
        self.text_columns = [c for c in (text_column, text_pair_column) if c]
        self.label_column = label_column
        self.labels: list[str] | None = [str(x) for x in labels] if labels is not None else None
        self.empty_text = empty_text

    def module_kwargs(self) -> dict[str, Any]:
        return {"labels": self.labels}

    @property
    def has_targets(self) -> bool:
        return bool(self.label_column)

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        label_column = data_cfg.get("label_column")
        if label_column and label_column not in columns:
            kwargs["label_column"] = None  # unlabelled: predictions only
        id2label = export["config_kwargs"].get("id2label")
        if id2label:
            kwargs["labels"] = [id2label[i] for i in range(len(id2label))]
        return kwargs

    def _check_columns(self, ds: datasets.Dataset, split: str, where: str) -> None:
        keys = {"text_column": self.text_columns[0]}
        if self.label_column:
            keys["label_column"] = self.label_column
        if len(self.text_columns) > 1:
            keys["text_pair_column"] = self.text_columns[1]
        for key, column in keys.items():
            if column not in ds.column_names:
                raise DataError(
                    f"column '{column}' (task.data.{key}) not found in split '{split}' of {where}; "
                    f"columns found: {ds.column_names}"
                )

    def _drop_empty(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        empty = [
            i for i, row in enumerate(zip(*(ds[c] for c in self.text_columns), strict=True))
            if any(t is None or not str(t).strip() for t in row)
        ]
        if not empty:
            return ds
        if self.empty_text == "error":
            raise DataError(
                f"{len(empty)} rows with empty text in split '{split}' of {where}: rows {_rows(empty)} "
                f"(set task.data.empty_text=drop to skip them)"
            )
        log.warning("dropped %d rows with empty text from split '%s' (%s): rows %s", len(empty), split, where, _rows(empty))
        keep = sorted(set(range(len(ds))) - set(empty))
        return ds.select(keep)

    def _label_strings(self, ds: datasets.Dataset) -> list[str | None]:
        feature = ds.features[self.label_column]
        values = ds[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            return [feature.names[v] if 0 <= v < feature.num_classes else str(v) for v in values]
        return [None if v is None else str(v) for v in values]

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        self._check_columns(ds, split, where)
        ds = self._drop_empty(ds, split, where)
        if not self.label_column:
            return ds
        return self.encode_labels(ds, split, where)

    @staticmethod
    def _set_labels(ds: datasets.Dataset, values: list) -> datasets.Dataset:
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        return ds.add_column("labels", values)

    def encode_labels(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        """Label values -> ids in ``self.labels`` (inferred from train when not declared)."""
        values = self._label_strings(ds)
        if self.labels is None:
            if split != "train":
                raise RuntimeError("labels are inferred from the train split first")
            found = {v for v in values if v is not None}
            numeric = all(v.lstrip("-").isdigit() for v in found)
            self.labels = sorted(found, key=int if numeric else str)
            log.info("labels inferred from train: %s (declare task.data.labels to fix their order)", self.labels)
        index = {label: i for i, label in enumerate(self.labels)}
        bad = [i for i, v in enumerate(values) if v not in index]
        if bad:
            seen = sorted({str(values[i]) for i in bad})[:MAX_ROWS_SHOWN]
            raise DataError(
                f"{len(bad)} rows in split '{split}' of {where} have labels outside the declared set "
                f"{self.labels} (task.data.labels): rows {_rows(bad)} with values {seen}"
            )
        ds = self._set_labels(ds, [index[v] for v in values])
        return ds.cast_column("labels", datasets.ClassLabel(names=self.labels))

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[c] for c in self.text_columns]
        encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        if "labels" in batch:
            encoded["labels"] = batch["labels"]
        return encoded

    def collate_fn(self) -> Callable:
        return DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)


class RegressionDataModule(ClassificationDataModule):
    """Text (+ pair) regression, e.g. STS-B similarity scores: the label column holds numbers."""

    stratify_column = None

    def module_kwargs(self) -> dict[str, Any]:
        return {}

    def encode_labels(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        values, bad = [], []
        for i, v in enumerate(ds[self.label_column]):
            try:
                number = float(v)
            except (TypeError, ValueError):
                number = math.nan
            if math.isnan(number):
                bad.append(i)
            values.append(number)
        if bad:
            seen = sorted({str(ds[self.label_column][i]) for i in bad[:MAX_ROWS_SHOWN]})
            raise DataError(
                f"{len(bad)} rows in split '{split}' of {where} have non-numeric labels in "
                f"'{self.label_column}' (task.data.label_column): rows {_rows(bad)} with values {seen}"
            )
        return self._set_labels(ds, values).cast_column("labels", datasets.Value("float32"))
