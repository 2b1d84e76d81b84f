"""Multiple choice (SWAG, HellaSwag, your own files): a context, N candidate endings, one correct index.

The endings are a list column (``choices_column``, as HellaSwag's ``endings``) or one column each
(``ending_columns``, as SWAG's ``ending0..3``); an optional ``question_column`` (SWAG's ``sent2``, the
start of the ending sentence) is put before every ending. Each row becomes N sequence pairs
``(context, question + ending)``, and batches are (batch, choices, length) tensors padded to the
longest choice of the batch. The label is the correct choice's index: an integer, or a string of
digits as in HellaSwag.

Truncation cuts the context first (``truncation="only_first"``), keeping every ending whole; a choice
whose question + ending alone leave no room for any context is cut with ``longest_first`` instead
(a warning counts them). Evaluation batches carry, under the batch's ``META``, each row's index in
its split (``example_id``), its context and its choice texts (question + ending), for test samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from tunelab.batch import with_meta
from tunelab.data import token_budget
from tunelab.data.base import Column, TaskDataModule
from tunelab.data.checks import MAX_ROWS_SHOWN, blank, drop_empty, require_columns, require_text
from tunelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

META_COLUMNS = ("example_id", "context", "choices")


def choice_index(value: Any) -> int | None:
    """A label as a choice index: an int, an integral float (csv), or a string of digits (HellaSwag);
    None for anything else (booleans, fractions, letters, missing)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


@dataclass
class MultipleChoiceCollator:
    """Pads every choice of the batch to the longest one: inputs (batch, choices, length), ``labels``
    (batch,); the ``META_COLUMNS`` go to the batch's ``META``."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        self.pad = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        meta = {k: [f[k] for f in features] for k in META_COLUMNS if k in features[0]}
        inputs = [k for k in features[0] if k not in META_COLUMNS and k != "labels"]
        choices = len(features[0]["input_ids"])
        flat = [{k: f[k][c] for k in inputs} for f in features for c in range(choices)]
        batch = {k: v.view(len(features), choices, -1) for k, v in self.pad(flat).items()}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return with_meta(batch, meta)


class MultipleChoiceDataModule(TaskDataModule):
    """A context and ``num_choices`` candidate endings per row, one of them correct.

    Args:
        context_column: the context (SWAG's ``sent1``, HellaSwag's ``ctx``, a passage or a question).
        question_column: optional text put before each ending (SWAG's ``sent2``); ``None`` for none.
        choices_column: a column holding the list of endings; or ``None`` with ``ending_columns``.
        ending_columns: one column per ending (SWAG's ``ending0..3``; a comma-separated string is
            split); or ``None`` with ``choices_column``.
        label_column: the correct ending's index (0-based); ``None`` for unlabelled data.
        num_choices: endings per row; ``None`` takes the number of ``ending_columns``, else that of
            the first row of train (of the file, when predicting).
        empty_text: a row whose context or any ending is blank: ``drop`` it (with a warning) or ``error``.
        **kwargs: see ``TaskDataModule``.
    """

    augment_unsupported = "edited contexts and endings could change which ending is the right one"
    columns = (
        Column("context_column", "the context"),
        Column("question_column", "the text put before each ending (SWAG's sent2)"),
        Column("choices_column", "the candidate endings (a list)"),
        Column("ending_columns", "the candidate endings, one column each, comma-separated (SWAG's ending0,...)"),
        Column("label_column", "the correct ending's index (metrics are computed when present)", target=True),
    )
    prediction_suffix = ".jsonl"  # rows hold lists of endings

    def __init__(
        self,
        *args: Any,
        context_column: str = "context",
        question_column: str | None = None,
        choices_column: str | None = "choices",
        ending_columns: Sequence[str] | str | None = None,
        label_column: str | None = "label",
        num_choices: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if isinstance(ending_columns, str):
            ending_columns = [c.strip() for c in ending_columns.split(",") if c.strip()]
        self.ending_columns = [str(c) for c in ending_columns] if ending_columns else None
        if bool(choices_column) == bool(self.ending_columns):
            raise ConfigError(
                "set one of task.data.choices_column (a column holding the list of endings) and "
                f"task.data.ending_columns (one column per ending), the other to null; got "
                f"choices_column={choices_column!r}, ending_columns={self.ending_columns!r}"
            )
        if num_choices is not None and (isinstance(num_choices, bool) or not isinstance(num_choices, int)
                                        or num_choices < 2):
            raise ConfigError(f"task.data.num_choices must be an integer >= 2 or null, got {num_choices!r}")
        if self.ending_columns and num_choices not in (None, len(self.ending_columns)):
            raise ConfigError(f"task.data.num_choices={num_choices}, but task.data.ending_columns names "
                              f"{len(self.ending_columns)} columns: {self.ending_columns}")
        self.context_column = context_column
        self.question_column = question_column
        self.choices_column = choices_column
        self.label_column = label_column
        self.num_choices = num_choices or (len(self.ending_columns) if self.ending_columns else None)

    def module_kwargs(self) -> dict[str, Any]:
        return {"num_choices": self.num_choices}

    @property
    def has_targets(self) -> bool:
        return bool(self.label_column)

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        """As the base's; and when the run's layout and a flag give both ``choices_column`` and
        ``ending_columns``, the one the file has is used (``--ending-columns`` scores a SWAG-layout file
        with a run trained on lists of choices, and ``--choices-column`` the other way round)."""
        kwargs = super().prediction_kwargs(data_cfg, columns, export)
        if data_cfg.get("choices_column") and data_cfg.get("ending_columns"):
            kwargs["ending_columns" if data_cfg["choices_column"] in columns else "choices_column"] = None
        return kwargs

    # --- validation -----------------------------------------------------------------------------
    def _choices(self, table: Mapping[str, Any]) -> list[list[Any]]:
        """Each row's endings, from the list column or the ending columns (a Dataset or a batch)."""
        if self.ending_columns:
            return [list(row) for row in zip(*(table[c] for c in self.ending_columns), strict=True)]
        return [list(row) for row in table[self.choices_column]]

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        texts = {"context_column": self.context_column}
        if self.question_column:
            texts["question_column"] = self.question_column
        texts |= {f"ending_columns[{i}]": c for i, c in enumerate(self.ending_columns or [])}
        others = {"choices_column": self.choices_column} if self.choices_column else {}
        if self.label_column:
            others["label_column"] = self.label_column
        require_columns(ds, {**texts, **others}, split, where)
        require_text(ds, texts, split, where)
        if self.choices_column:
            not_lists = [i for i, v in enumerate(ds[self.choices_column]) if not isinstance(v, list)]
            if not_lists:
                raise DataError(
                    f"column '{self.choices_column}' (task.data.choices_column) of split '{split}' in {where} must "
                    f"hold a list of endings per row; {self.rows(ds, split, not_lists)} hold "
                    f"{type(ds[not_lists[0]][self.choices_column]).__name__}"
                )
        empty = [i for i, (context, choices) in enumerate(zip(ds[self.context_column], self._choices(ds), strict=True))
                 if blank(context) or any(blank(c) for c in choices)]
        ds = drop_empty(ds, empty, self.empty_text, "an empty context or choice", split, where, self.numbering[split])
        if len(ds) == 0:
            return ds  # the base names the split
        self._check_counts(ds, split, where)
        return self._encode_labels(ds, split, where) if self.label_column else ds

    def _check_counts(self, ds: datasets.Dataset, split: str, where: str) -> None:
        counts = [len(c) for c in self._choices(ds)]
        inferred = ""
        if self.num_choices is None:
            self.num_choices = counts[0]
            inferred = f" (inferred from the first row of split '{split}'; set task.data.num_choices to fix it)"
            log.info("num_choices=%d, from the first row of split '%s'", self.num_choices, split)
        bad = [i for i, n in enumerate(counts) if n != self.num_choices]
        if bad:
            first = bad[0]
            raise DataError(
                f"{len(bad)} rows in split '{split}' of {where} do not have task.data.num_choices={self.num_choices}"
                f"{inferred} endings in column '{self.choices_column}' (task.data.choices_column): "
                f"{self.rows(ds, split, bad)}; e.g. {self.rows(ds, split, [first])} has {counts[first]}: "
                f"{ds[first][self.choices_column]!r}"
            )

    def _encode_labels(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        values = list(ds[self.label_column])
        index = [choice_index(v) for v in values]
        key = f"'{self.label_column}' (task.data.label_column)"
        not_integer = [i for i, v in enumerate(index) if v is None]
        if not_integer:
            seen = sorted({repr(values[i]) for i in not_integer[:MAX_ROWS_SHOWN]})
            raise DataError(
                f"{len(not_integer)} rows in split '{split}' of {where} have a label in {key} that is not the "
                f"index of a choice (an integer 0..{self.num_choices - 1}): {self.rows(ds, split, not_integer)} "
                f"with values {', '.join(seen)}"
            )
        outside = [i for i, v in enumerate(index) if not 0 <= v < self.num_choices]
        if outside:
            seen = sorted({repr(values[i]) for i in outside[:MAX_ROWS_SHOWN]})
            raise DataError(
                f"{len(outside)} rows in split '{split}' of {where} have a label in {key} outside 0..{self.num_choices - 1} "
                f"(task.data.num_choices={self.num_choices} choices, counted from 0): {self.rows(ds, split, outside)} "
                f"with values {', '.join(seen)}"
            )
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        return ds.add_column("labels", index, feature=datasets.Value("int64"))

    # --- features -------------------------------------------------------------------------------
    def feature_length(self, input_ids: list) -> int:
        """A row is as long as its longest choice."""
        return max(len(ids) for ids in input_ids)

    def batch_cost(self) -> token_budget.Cost:
        """Each row feeds ``num_choices`` sequences of the batch's padded length."""
        return token_budget.padded_cost(self.pad_to_multiple_of, width=self.num_choices or 1)

    def featurize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        return ds.map(self.encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                      fn_kwargs={"split": split}, desc=f"Tokenizing {split}")

    def encode(self, batch: dict[str, list], indices: list[int], split: str = "test") -> dict[str, list]:
        """Rows -> per-row lists of ``num_choices`` encoded pairs (+ ``labels``); rows of splits other than
        ``train`` keep the ``META_COLUMNS``."""
        contexts = batch[self.context_column]
        questions = batch[self.question_column] if self.question_column else [None] * len(contexts)
        choices = [[" ".join(t for t in (question, str(ending)) if t and t.strip()) for ending in endings]
                   for question, endings in zip(questions, self._choices(batch), strict=True)]
        enc = self.pair_encodings([c for c, row in zip(contexts, choices, strict=True) for _ in row],
                                  [text for row in choices for text in row])
        out: dict[str, list] = {k: [] for k in enc}
        start = 0
        for row in choices:
            for k, values in enc.items():
                out[k].append(values[start : start + len(row)])
            start += len(row)
        if "labels" in batch:
            out["labels"] = batch["labels"]
        if split != "train":
            out |= {"example_id": list(indices), "context": list(contexts), "choices": choices}
        return out

    def pair_encodings(self, firsts: list[str], seconds: list[str]) -> dict[str, list]:
        """``(first, second)`` pairs cut to ``max_length``: the first (the context) is cut, unless the
        second alone leaves no room for it (then ``longest_first``)."""
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True)
        second_lengths = [len(ids) for ids in self.tokenizer(seconds, add_special_tokens=False)["input_ids"]]
        groups = {"only_first": [i for i, n in enumerate(second_lengths) if n < room]}
        groups["longest_first"] = [i for i, n in enumerate(second_lengths) if n >= room]
        if groups["longest_first"]:
            log.warning("%d of %d choices are %d tokens or longer without the context: cut with their context "
                        "(longest_first) to task.data.max_length=%d", len(groups["longest_first"]), len(seconds),
                        room, self.max_length)
        out: dict[str, list] = {}
        for strategy, positions in groups.items():
            if not positions:
                continue
            enc = self.tokenizer([firsts[i] for i in positions], [seconds[i] for i in positions],
                                 truncation=strategy, max_length=self.max_length)
            for k, values in enc.items():
                column = out.setdefault(k, [None] * len(firsts))
                for i, value in zip(positions, values, strict=True):
                    column[i] = value
        return out

    def collate_fn(self) -> MultipleChoiceCollator:
        return MultipleChoiceCollator(self.tokenizer, self.pad_to_multiple_of)
