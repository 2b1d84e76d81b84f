"""Instruction tuning: rows of instruction / input / output (Alpaca style), or chat ``messages`` lists.

A text-to-text family on the seams of ``Seq2SeqDataModule``: the source is the instruction (with its
input below it, when there is one) and the target the output, so the same decoder prompting, loss on
the completion only, batched generation and metrics apply. Chat data (``messages_column``) is rendered
by the tokenizer's chat template, the loss covers every assistant turn, and evaluation generates the
last assistant turn from the conversation before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets

from tunelab.data.base import Column
from tunelab.data.checks import blank, drop_empty, require_columns
from tunelab.data.prompts import Encoded, conversation_problem
from tunelab.data.seq2seq import Seq2SeqDataModule
from tunelab.errors import ConfigError, DataError


def answered(conversations: list[list[Mapping[str, str]]]) -> bool:
    """Whether every conversation ends with an assistant turn."""
    return all(c[-1]["role"] == "assistant" for c in conversations)


def conversation_text(messages: list[Mapping[str, str]]) -> str:
    """A conversation as plain text (samples, prediction files and encoder-decoder sources)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class InstructDataModule(Seq2SeqDataModule):
    """Instruction -> response pairs, or multi-turn chats.

    Args:
        source_column, input_column, target_column: Alpaca-style instruction, input and output columns
            (``input_column`` may be absent or blank per row; ``target_column=None`` for prompts to answer).
        messages_column: a column of ``[{role, content}, ...]`` conversations instead (roles system, user,
            assistant; needs ``prompt.chat=true`` on a decoder).
        **kwargs: see ``Seq2SeqDataModule`` (``prompt``, ``max_length``, ...).
    """

    columns = (
        Column("source_column", "the instruction (or source text)"),
        Column("input_column", "the instruction's input (optional per row)"),
        Column("target_column", "the reference response (metrics are computed when present)", target=True),
        Column("messages_column", "chat conversations: lists of {role, content}"),
    )

    def __init__(self, *args: Any, input_column: str | None = "input", messages_column: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.input_column, self.messages_column = input_column, messages_column
        if messages_column and (self.prompt.shots or self.prompt.examples):
            raise ConfigError(f"task.data.messages_column={messages_column} holds whole conversations, which take no "
                              "few-shot examples (task.data.prompt.shots, examples): set them to 0 and null")
        if messages_column and self.decoder and not self.prompt.chat:
            raise ConfigError(
                f"task.data.messages_column={messages_column} holds chat conversations, which a decoder reads through "
                "its chat template: set task.data.prompt.chat=true"
            )

    @property
    def uses_conversations(self) -> bool:  # type: ignore[override]
        return bool(self.messages_column)

    @property
    def has_targets(self) -> bool:
        """Conversations: whether every split's conversations end with an assistant turn (the reference)."""
        if not self.messages_column:
            return super().has_targets
        return all(answered(ds[self.messages_column]) for ds in (self.examples or {}).values())

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = super().prediction_kwargs(data_cfg, columns, export)
        if data_cfg.get("input_column") and data_cfg["input_column"] not in columns:
            kwargs["input_column"] = None
        return kwargs

    def _columns(self) -> dict[str, str]:
        if self.messages_column:
            return {"messages_column": self.messages_column}
        return super()._columns()

    def _pairs(self, columns: Mapping[str, list]) -> tuple[list[Any], list[Any] | None]:
        if self.messages_column:
            conversations = columns[self.messages_column]
            if not answered(conversations):  # a split is either scored or only answered (validate)
                return [conversation_text(c) for c in conversations], None
            return [conversation_text(c[:-1]) for c in conversations], [c[-1]["content"] for c in conversations]
        instructions, targets = super()._pairs(columns)
        inputs = columns.get(self.input_column) if self.input_column else None
        if inputs is None:
            return instructions, targets
        return [f"{i}\n\n{x}" if not blank(x) else i for i, x in zip(instructions, inputs, strict=True)], targets

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        if not self.messages_column:
            if self.input_column and self.input_column not in ds.column_names:
                self.input_column = None  # an optional column: instructions alone
            return super().validate(ds, split, where)
        require_columns(ds, self._columns(), split, where)
        conversations = ds[self.messages_column]
        problems = [(i, p) for i, c in enumerate(conversations) if (p := conversation_problem(c))]
        if problems:
            first, problem = problems[0]
            raise DataError(
                f"column '{self.messages_column}' (task.data.messages_column) of split '{split}' of {where}: "
                f"{len(problems)} conversations are malformed, e.g. {self.rows(ds, split, [first])}: {problem}"
            )
        ends = [c[-1]["role"] == "assistant" for c in conversations]
        if 0 < sum(ends) < len(ends):
            user = [i for i, ends_answered in enumerate(ends) if not ends_answered]
            raise DataError(
                f"split '{split}' of {where} mixes conversations that end with an assistant turn (the reference) and "
                f"{len(user)} that end with a user turn ({self.rows(ds, split, user)}): a split is either scored or "
                f"only answered"
            )
        empty = [i for i, c in enumerate(conversations) if any(blank(m["content"]) for m in c if m["role"] != "system")]
        return drop_empty(ds, empty, self.empty_text, "an empty turn", split, where, self.numbering[split])

    def encode(self, row: Mapping[str, Any], target: str | None) -> Encoded:
        if not self.messages_column:
            return super().encode(row, target)
        return self.prompt.encode_conversation(self.tokenizer, row[self.messages_column])
