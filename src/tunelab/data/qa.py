"""Extractive question answering data in SQuAD layout: question, context, answers.

``answers`` is ``{"text": [...], "answer_start": [...]}`` (character offsets into the context);
empty lists mean "no answer" (SQuAD 2.0). In csv files the column holds that dict as a JSON string.

Each example becomes one or more features: the question + a window of the context, windows
overlapping by ``stride`` tokens when the context does not fit in ``max_length``. Training
features carry the answer's start/end token (the CLS token when the window does not hold the
whole answer, or there is none). Evaluation features also carry, under the batch's ``meta``
entry, what decoding and scoring need: the example's row, the context's token range and
character offsets, the context itself and the gold answer texts.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import datasets
from transformers import PreTrainedTokenizerBase

from tunelab.batch import with_meta
from tunelab.data.base import Column, TaskDataModule
from tunelab.data.checks import ROW, check_texts, require_fast_tokenizer
from tunelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Per-feature bookkeeping the model does not take; the collator moves it to the batch's META.
META_COLUMNS = ("example_id", "context_start", "context_end", "cls_index", "offset_mapping", "question", "context",
                "answer_texts")
ANSWERS_FEATURE = datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")})


@dataclass
class QACollator:
    """Pads model inputs on the right (offsets index the unpadded tokens) and keeps ``meta``."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        meta = {k: [f.pop(k) for f in features] for k in META_COLUMNS if k in features[0]}
        batch = self.tokenizer.pad(features, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                   padding_side="right", return_tensors="pt")
        return with_meta(batch, meta)


def parse_answers(value: Any) -> tuple[list[str], list[int]] | None:
    """SQuAD answers from a struct or its JSON string; ``None`` when malformed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return [], []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, Mapping) or "text" not in value or "answer_start" not in value:
        return None
    texts, starts = value["text"], value["answer_start"]
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        return None
    if not all(isinstance(t, str) for t in texts) or not all(isinstance(s, int) for s in starts):
        return None
    return texts, starts


class QuestionAnsweringDataModule(TaskDataModule):
    """Extractive QA (SQuAD 1.1 / 2.0 layout).

    Args:
        question_column, context_column: text columns.
        answers_column: SQuAD answers (a struct, or its JSON string); ``None`` for data without
            answers (prediction only).
        allow_no_answer: accept questions without an answer (SQuAD 2.0); otherwise they are an error.
        stride: tokens shared by consecutive windows of a context longer than ``max_length``.
        empty_text: an empty question or context: ``error`` (naming the rows) or ``drop`` them.
        bad_answers: what to do with a gold answer whose text is not at its ``answer_start`` in
            the context: ``error`` (naming the rows) or ``drop`` the row (with a warning).
        **kwargs: see ``TaskDataModule`` (``max_length`` is the window length in tokens).
    """

    augment_unsupported = "an edited context would no longer hold the answers at their answer_start offsets"
    columns = (
        Column("question_column", "the question"),
        Column("context_column", "the context the answer is taken from"),
        Column("answers_column", "SQuAD answers {text, answer_start} (metrics are computed when present)", target=True),
    )

    def __init__(
        self,
        *args: Any,
        question_column: str = "question",
        context_column: str = "context",
        answers_column: str | None = "answers",
        allow_no_answer: bool = False,
        stride: int = 128,
        bad_answers: Literal["error", "drop"] = "error",
        empty_text: Literal["drop", "error"] = "error",
        **kwargs: Any,
    ):
        super().__init__(*args, empty_text=empty_text, **kwargs)
        if bad_answers not in ("error", "drop"):
            raise ConfigError(f"task.data.bad_answers must be 'error' or 'drop', got {bad_answers!r}")
        if not 0 <= stride < self.max_length:
            raise ConfigError(f"task.data.stride ({stride}) must be >= 0 and below task.data.max_length ({self.max_length})")
        require_fast_tokenizer(self.tokenizer, "extractive QA", "character offsets")
        if self.data_report.config.normalisers:
            keys = ", ".join(f"task.data.quality.{name}" for name in self.data_report.config.normalisers)
            raise ConfigError(f"{keys}: normalising the texts of extractive QA would move the answers' character "
                              "offsets (answer_start) in the context; set it to false for this task")
        self.question_column = question_column
        self.context_column = context_column
        self.answers_column = answers_column
        self.allow_no_answer = allow_no_answer
        self.stride = stride
        self.bad_answers = bad_answers

    def module_kwargs(self) -> dict[str, Any]:
        return {"with_no_answer": self.allow_no_answer}

    @property
    def has_targets(self) -> bool:
        return bool(self.answers_column)

    # --- validation -----------------------------------------------------------------------------
    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        text = {"question_column": self.question_column, "context_column": self.context_column}
        ds = check_texts(ds, text, split, where, self.empty_text, self.numbering[split],
                         {"answers_column": self.answers_column} if self.answers_column else None,
                         what=f"an empty question or context ('{self.question_column}', '{self.context_column}')")
        if not self.answers_column:
            return ds
        return self._check_answers(ds, ds[self.context_column], split, where)

    def _check_answers(self, ds: datasets.Dataset, contexts: list[str], split: str, where: str) -> datasets.Dataset:
        column, key = self.answers_column, "task.data.answers_column"
        parsed = [parse_answers(v) for v in ds[column]]
        malformed = [i for i, p in enumerate(parsed) if p is None]
        if malformed:
            raise DataError(
                f"{len(malformed)} rows in split '{split}' of {where} have malformed answers in '{column}' ({key}): "
                f"{self.rows(ds, split, malformed)}; expected {{\"text\": [...], \"answer_start\": [...]}} (a JSON string in csv files)"
            )
        unanswered = [i for i, (texts, _) in enumerate(parsed) if not texts]
        if unanswered and not self.allow_no_answer:
            raise DataError(
                f"{len(unanswered)} rows in split '{split}' of {where} have no answer in '{column}': "
                f"{self.rows(ds, split, unanswered)}; set task.data.allow_no_answer=true for SQuAD 2.0-style data"
            )
        misplaced = [
            i for i, ((texts, starts), context) in enumerate(zip(parsed, contexts, strict=True))
            if any(not t or context[s : s + len(t)] != t for t, s in zip(texts, starts, strict=True))
        ]
        if misplaced and self.bad_answers == "error":
            i = misplaced[0]
            raise DataError(
                f"{len(misplaced)} rows in split '{split}' of {where} have an answer text that is not in the context "
                f"at its answer_start ('{column}'): {self.rows(ds, split, misplaced)}; e.g. {self.rows(ds, split, [i])}: "
                f"{parsed[i][0]} at {parsed[i][1]} (set task.data.bad_answers=drop to skip such rows)"
            )
        if misplaced:
            log.warning("dropped %d rows whose answer is not at its answer_start from split '%s' (%s): %s",
                        len(misplaced), split, where, self.rows(ds, split, misplaced))
        if isinstance(ds.features[column], datasets.Value):  # JSON strings (csv) -> the SQuAD struct
            answers = [{"text": t, "answer_start": s} for t, s in parsed]
            ds = ds.remove_columns(column).add_column(column, answers, feature=ANSWERS_FEATURE)
        if misplaced:
            ds = ds.select(sorted(set(range(len(ds))) - set(misplaced)))
        return ds

    # --- features -------------------------------------------------------------------------------
    def featurize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        """Examples -> windows; evaluation windows keep ``META_COLUMNS`` for decoding and scoring."""
        return ds.map(self.encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                      fn_kwargs={"split": split}, desc=f"Tokenizing {split}")

    def encode(self, batch: dict[str, list], indices: list[int], split: str = "test") -> dict[str, list]:
        """Question + context windows (``truncation="only_second"``, overlapping by ``stride``);
        windows of splits other than ``train`` keep ``META_COLUMNS``."""
        keep_meta = split != "train"
        questions = [q.lstrip() for q in batch[self.question_column]]  # some SQuAD questions start with spaces
        contexts = batch[self.context_column]
        try:
            enc = self.tokenizer(
                questions, contexts, truncation="only_second", max_length=self.max_length, stride=self.stride,
                return_overflowing_tokens=True, return_offsets_mapping=True,
            )
        except Exception as err:  # the Rust tokenizer refuses e.g. a question longer than the window
            raise ConfigError(
                f"could not split contexts into windows of task.data.max_length={self.max_length} tokens with "
                f"task.data.stride={self.stride}: {err}"
            ) from err
        samples = enc.pop("overflow_to_sample_mapping")
        offsets = enc.pop("offset_mapping")
        out: dict[str, list] = {k: list(v) for k, v in enc.items()}
        answers = batch[self.answers_column] if self.answers_column else None
        extra: dict[str, list] = {k: [] for k in (*META_COLUMNS, "start_positions", "end_positions")}
        cls_id = self.tokenizer.cls_token_id
        for i, row in enumerate(samples):
            sequence_ids = enc.sequence_ids(i)
            if 1 not in sequence_ids:
                where = self.numbering[split].describe([batch[ROW][row] if ROW in batch else indices[row]])
                raise ConfigError(
                    f"task.data.max_length={self.max_length} leaves no room for the context after the question in "
                    f"{where} of split '{split}' ({len(questions[row])} characters); raise it"
                )
            lo = sequence_ids.index(1)
            hi = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
            ids = enc["input_ids"][i]
            cls = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
            if answers is not None:
                texts, starts = answers[row]["text"], answers[row]["answer_start"]
                first = (starts[0], starts[0] + len(texts[0])) if texts else None
                start, end = self._token_span(offsets[i], lo, hi, first, cls)
                extra["start_positions"].append(start)
                extra["end_positions"].append(end)
            if keep_meta:
                for key, value in (("example_id", indices[row]), ("context_start", lo), ("context_end", hi),
                                   ("cls_index", cls), ("offset_mapping", [list(o) for o in offsets[i]]),
                                   ("question", questions[row]), ("context", contexts[row]),
                                   ("answer_texts", answers[row]["text"] if answers is not None else [])):
                    extra[key].append(value)
        out.update({k: v for k, v in extra.items() if v})
        return out

    @staticmethod
    def _token_span(offsets: Sequence[Sequence[int]], lo: int, hi: int, chars: tuple[int, int] | None,
                    cls: int) -> tuple[int, int]:
        """Tokens ``[start, end]`` of the context window ``[lo, hi]`` covering characters
        ``[chars[0], chars[1])``, or ``(cls, cls)`` when the window does not hold them all."""
        if chars is None or not (offsets[lo][0] <= chars[0] and offsets[hi][1] >= chars[1]):
            return cls, cls
        token_starts = [o[0] for o in offsets[lo : hi + 1]]
        token_ends = [o[1] for o in offsets[lo : hi + 1]]
        start = lo + bisect_right(token_starts, chars[0]) - 1  # last token starting at or before the answer
        end = lo + bisect_left(token_ends, chars[1])  # first token ending at or after it
        return start, end

    def collate_fn(self) -> QACollator:
        return QACollator(self.tokenizer, self.pad_to_multiple_of)
