"""Question answering by generation: the answer is generated (by a decoder or an encoder-decoder), not
picked as a span, and scored with the same SQuAD exact match and F1 as the extractive family.

Rows are in SQuAD layout (question, context, ``answers`` ``{text, answer_start}``). The completion is the
first gold answer; every gold answer is a reference for the metric. A decoder reads the row through
``task.data.prompt`` (``{context}``, ``{question}``); an encoder-decoder reads T5's SQuAD format,
``question: ... context: ...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets

from tunelab.data.base import Column
from tunelab.data.checks import require_columns
from tunelab.data.qa import parse_answers
from tunelab.data.seq2seq import ALL_REFERENCES as ANSWERS
from tunelab.data.seq2seq import Seq2SeqDataModule
from tunelab.errors import DataError


class GenerativeQADataModule(Seq2SeqDataModule):
    """Question + context -> answer text.

    Args:
        source_column: the question; ``context_column``: the passage.
        target_column: SQuAD answers (a struct or its JSON string; only the texts are read); ``None`` for
            questions to answer (prediction only).
        **kwargs: see ``Seq2SeqDataModule`` (``prompt``, ``max_length``, ...).
    """

    columns = (
        Column("source_column", "the question (or source text)"),
        Column("context_column", "the passage the answer is read from"),
        Column("target_column", "SQuAD answers {text, answer_start} (metrics are computed when present)", target=True),
    )

    meta_columns = (*Seq2SeqDataModule.meta_columns, ANSWERS)  # every gold answer, for the metric

    def __init__(self, *args: Any, context_column: str = "context", **kwargs: Any):
        kwargs.setdefault("source_column", "question")
        kwargs.setdefault("target_column", "answers")
        super().__init__(*args, **kwargs)
        self.context_column = context_column

    @property
    def answers_column(self) -> str | None:
        return self.target_column

    def _columns(self) -> dict[str, str]:
        return {**super()._columns(), "context_column": self.context_column}

    def _pairs(self, columns: Mapping[str, list]) -> tuple[list[Any], list[Any] | None]:
        questions, contexts = columns[self.source_column], columns[self.context_column]
        sources = questions if self.decoder else [f"question: {q} context: {c}" for q, c in zip(questions, contexts, strict=True)]
        if not self.answers_column:
            return sources, None
        texts = [(parse_answers(a) or ([], []))[0] for a in columns[self.answers_column]]
        return sources, [t[0] if t else "" for t in texts]  # no answer (SQuAD 2.0): an empty target

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        require_columns(ds, self._columns(), split, where)
        if self.answers_column:
            parsed = [parse_answers(a) for a in ds[self.answers_column]]
            bad = [i for i, p in enumerate(parsed) if p is None]
            if bad:
                raise DataError(f"{len(bad)} rows in split '{split}' of {where} have malformed answers in "
                                f"'{self.answers_column}' (task.data.answers_column): {self.rows(ds, split, bad)}")
            texts = [p[0] for p in parsed]  # rows without an answer (SQuAD 2.0) go by task.data.empty_text
            ds = ds.add_column(ANSWERS, texts)
        return super().validate(ds, split, where)

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        encoded = super().tokenize({k: v for k, v in batch.items() if k != ANSWERS})
        if ANSWERS in batch:
            encoded[ANSWERS] = batch[ANSWERS]
        return encoded
