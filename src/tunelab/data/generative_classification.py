"""Classification by generation: the label's name is the answer a decoder (or an encoder-decoder) is trained
to write after the text, and prediction scores every label name as that answer (``tunelab.tasks.
GenerativeClassificationModule``).

A row's target is its label's name; the gold label's index travels in the batch's ``meta`` (``GOLD``). The
label names become candidate completions once, through the same ``encode`` as the training targets (a
decoder: ``completion_prefix`` + name + eos, or the chat template's assistant turn; an encoder-decoder: the
target tokenizer), so that scoring reads exactly the tokens the model was trained on. Two labels whose
completions are the same (or one a prefix of the other) cannot be told apart: a ConfigError.

On a decoder every prompt is cut to leave room for the longest label's completion (``completion_room``),
whatever the row's own label, so a prompt (and its scores) never depends on the gold label and an unlabelled
row reads the same prompt as a labelled one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from tunelab.data.checks import MAX_ROWS_SHOWN, check_texts, visible_columns
from tunelab.data.classification import COLUMNS, label_string
from tunelab.data.prompts import SOURCE_FIELD
from tunelab.data.seq2seq import Seq2SeqDataModule
from tunelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GOLD = "gold_label"  # in features and meta: the index of the row's label in ``labels``
LABELS = "labels"  # the validated examples' label ids (a ClassLabel column, as ClassificationDataModule's)
TEXT_PAIR_FIELD = "text_pair"  # the prompt template's field for task.data.text_pair_column


class GenerativeClassificationDataModule(Seq2SeqDataModule):
    """Text (+ optional pair) -> the name of its label, as a completion.

    Args:
        text_column: the text (the prompt's ``{source}``); ``text_pair_column``: an optional second text
            (``{text_pair}`` in a decoder's template; an encoder-decoder reads ``<text_column>: text
            <text_pair_column>: pair``, as T5's GLUE inputs).
        label_column: label names, or integer ids into ``labels`` (a ClassLabel column by its names, or by id
            when ``labels`` renames them one for one); ``None`` for unlabelled rows (prediction only).
        labels: the label names in id order: the answers the model writes (required).
        **kwargs: see ``Seq2SeqDataModule`` (``prompt``, ``architecture``, ``max_length``, ``max_target_length``,
            ``source_prefix``, ...).
    """

    stratify_column = LABELS
    columns = COLUMNS
    augment_unsupported = None  # the text (and pair) of a row, as in ClassificationDataModule
    meta_columns = (*Seq2SeqDataModule.meta_columns, GOLD)

    def __init__(
        self,
        *args: Any,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str | None = "label",
        labels: Sequence[Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, source_column=text_column, target_column=None, **kwargs)
        if not labels:
            raise ConfigError(
                "task.data.labels: classification by generation needs the label names in id order (they are the "
                "answers the model learns to write), e.g. task.data.labels=[negative,positive]"
            )
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.labels = [str(label) for label in labels]
        self.candidates = self._candidates()

    # --- label names as completions ---------------------------------------------------------------
    def _completion(self, label: str) -> list[int]:
        """The token ids of ``label`` as the target of a row, tokenized as training tokenizes targets."""
        if self.decoder:
            fields = {f: "x" for f in (SOURCE_FIELD, TEXT_PAIR_FIELD, *self.prompt.fields())}
            return self.encode(fields, label)[2]
        return self.tokenizer(text_target=label, return_token_type_ids=False)["input_ids"]

    def _candidates(self) -> list[list[int]]:
        """Each label's completion ids; a ConfigError for blank labels, completions longer than
        ``max_target_length``, and labels that tokenize the same (or one as the start of another)."""
        blank = [label for label in self.labels if not label.strip()]
        if blank:
            raise ConfigError(f"task.data.labels holds blank names ({blank}): each label needs a name to generate")
        if len(set(self.labels)) < len(self.labels):
            repeated = sorted({label for label in self.labels if self.labels.count(label) > 1})
            raise ConfigError(f"task.data.labels names {repeated} more than once")
        candidates = [self._completion(label) for label in self.labels]
        for label, ids in zip(self.labels, candidates, strict=True):
            if len(ids) > self.max_target_length:
                raise ConfigError(
                    f"label '{label}' of task.data.labels is {len(ids)} tokens as a completion, more than "
                    f"task.data.max_target_length={self.max_target_length}: raise it (or shorten the label)"
                )
        for i, a in enumerate(candidates):
            for j, b in enumerate(candidates):
                if i != j and b[:len(a)] == a:
                    how = "the same completion ids" if a == b else "completion ids that start another's"
                    raise ConfigError(
                        f"task.data.labels: '{self.labels[i]}' and '{self.labels[j]}' tokenize to {how} ({a} and {b}) "
                        f"with tokenizer {self.tokenizer.name_or_path}, so classification by generation cannot tell "
                        f"them apart; rename one of them"
                    )
        return candidates

    def module_kwargs(self) -> dict[str, Any]:
        return {**super().module_kwargs(), "labels": self.labels, "candidates": self.candidates}

    @property
    def has_targets(self) -> bool:
        return bool(self.label_column)

    # --- validation -------------------------------------------------------------------------------
    def _text_keys(self) -> dict[str, str]:
        keys = {"text_column": self.text_column}
        if self.text_pair_column:
            keys["text_pair_column"] = self.text_pair_column
        return keys

    def _label_values(self, ds: datasets.Dataset) -> tuple[list[str | None], str]:
        """Each row's label name (None when missing or not a label id), and how the values were read."""
        feature, values = ds.features[self.label_column], ds[self.label_column]
        declared = set(self.labels)
        if isinstance(feature, datasets.ClassLabel):
            names = feature.names
            if not set(names) <= declared and len(names) == len(self.labels):
                log.info("column '%s': ClassLabel names %s read by id as task.data.labels %s",
                         self.label_column, names, self.labels)
                names = self.labels
            return [names[v] if 0 <= v < len(names) else None for v in values], "ClassLabel"
        numeric = isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint", "float"))
        strings = [label_string(v) for v in values]
        if numeric and not all(label.lstrip("-").isdigit() for label in self.labels):  # integer ids into labels
            by_id = {str(i): label for i, label in enumerate(self.labels)}
            return [by_id.get(v, v) if v is not None else None for v in strings], "ids"
        return strings, "names"

    def _label_ids(self, ds: datasets.Dataset, split: str, where: str) -> list[int]:
        values, read_as = self._label_values(ds)
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise DataError(
                f"{len(missing)} rows in split '{split}' of {where} have no label in '{self.label_column}' "
                f"(task.data.label_column): missing label in {self.rows(ds, split, missing)}; fill them in or remove those rows"
            )
        index = {label: i for i, label in enumerate(self.labels)}
        bad = [i for i, v in enumerate(values) if v not in index]
        if bad:
            seen = sorted({str(values[i]) for i in bad})[:MAX_ROWS_SHOWN]
            ids = f" (integers are ids into task.data.labels, 0 to {len(self.labels) - 1})" if read_as == "ids" else ""
            raise DataError(
                f"{len(bad)} rows in split '{split}' of {where} have labels outside the declared set {self.labels} "
                f"(task.data.labels): {self.rows(ds, split, bad)} with values {seen}{ids}"
            )
        return [index[v] for v in values]

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        labelled = {"label_column": self.label_column} if self.label_column else None
        ds = check_texts(ds, self._text_keys(), split, where, self.empty_text, self.numbering[split], labelled)
        if self.decoder:
            self.prompt.check_columns([*visible_columns(ds), *([TEXT_PAIR_FIELD] if self.text_pair_column else [])],
                                      split, where)
        if not self.label_column:
            return ds
        ids = self._label_ids(ds, split, where)
        if LABELS in ds.column_names:
            ds = ds.remove_columns(LABELS)
        return ds.add_column(LABELS, ids).cast_column(LABELS, datasets.ClassLabel(names=self.labels))

    # --- features ---------------------------------------------------------------------------------
    def _pairs(self, columns: Mapping[str, list]) -> tuple[list[Any], list[Any] | None]:
        texts = [str(t) for t in columns[self.text_column]]
        if self.text_pair_column and not self.decoder:
            pairs = columns[self.text_pair_column]
            texts = [f"{self.text_column}: {t} {self.text_pair_column}: {p}" for t, p in zip(texts, pairs, strict=True)]
        targets = [self.labels[i] for i in columns[LABELS]] if LABELS in columns else None
        return texts, targets

    def completion_room(self, completion: list[int]) -> int:
        """Every prompt leaves room for the longest label, whatever the row's own (or none)."""
        return max(len(c) for c in self.candidates)

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        gold = batch[LABELS] if self.label_column else None
        rows = {k: v for k, v in batch.items() if k != LABELS}  # an unlabelled file's own "labels" column is text
        if self.decoder and self.text_pair_column:
            rows[TEXT_PAIR_FIELD] = [str(p) for p in rows[self.text_pair_column]]
        out = super().tokenize(rows if gold is None else {**rows, LABELS: gold})
        if gold is not None:
            out[GOLD] = list(gold)
        return out
