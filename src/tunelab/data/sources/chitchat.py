"""The Chit-Chat dataset (``chitchat-dataset`` on PyPI, MIT): 7,168 open-domain conversations between two people.

Its ``dataset.json`` maps a conversation id to ``{"messages": [[utterance, ...], ...]}``: turns, each a list
of the utterances one sender typed in a row. The first sender becomes the user and the other the
assistant, a turn's utterances are joined by newlines, and a trailing user turn is dropped, so every
conversation ends with the assistant's turn (the reference that evaluation generates).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from tunelab.data.checks import RowNumbering
from tunelab.data.sources import Source
from tunelab.errors import DataError


def chitchat(path: str, max_turns: int | None = None) -> Source:
    """Conversations from ``path`` (``dataset.json``) as one ``train`` split with ``id`` and ``messages``;
    ``max_turns`` keeps each conversation's first turns (an even number: user, assistant, ...)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"Chit-Chat file not found: {path} (task.data.source.path)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not the Chit-Chat dataset.json: {err}") from None
    ids, conversations = [], []
    for key, conversation in raw.items():
        turns = [("\n".join(u["text"].strip() for u in turn if u.get("text", "").strip()), turn[0]["sender"])
                 for turn in conversation.get("messages", []) if turn]
        first = turns[0][1] if turns else None
        messages: list[dict[str, str]] = []
        for text, sender in turns:
            role = "user" if sender == first else "assistant"
            if not text:
                continue
            if messages and messages[-1]["role"] == role:  # turns of one speaker around a dropped empty one
                messages[-1]["content"] += "\n" + text
            else:
                messages.append({"role": role, "content": text})
        if max_turns:
            messages = messages[:max_turns]
        if messages and messages[-1]["role"] == "user":
            messages = messages[:-1]
        if len(messages) >= 2:
            ids.append(key)
            conversations.append(messages)
    ds = datasets.Dataset.from_dict({"id": ids, "messages": conversations})
    return Source(datasets.DatasetDict({"train": ds}), {"train": str(file)},
                  {"train": RowNumbering()})
