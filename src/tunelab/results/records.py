"""One run as the results tables see it, wherever it came from (a run folder or W&B)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tunelab.errors import TunelabError

COMPLETED, INCOMPLETE, FAILED = "completed", "incomplete", "failed"
UNREADABLE = "unreadable"  # a run folder whose files are malformed or cannot be read
PRUNED = "pruned"  # a search trial stopped by its pruner (status.json says why): no test metrics, by design


class ResultsError(TunelabError):
    """The runs cannot be tabulated as asked (no runs, malformed files, unknown keys or metrics)."""


@dataclass
class Record:
    """A run: flat config (``"optimizer.lr"``), flat metrics (``"test/accuracy"``) and status.

    ``status`` is ``completed`` (metrics present), ``incomplete`` (running, or no metrics),
    ``failed`` or ``unreadable`` (malformed or unreadable files); ``note`` says why a run is not completed. ``history`` loads the metrics logged
    during training as a frame with a ``step`` column.
    """

    source: str
    config: dict[str, Any]
    metrics: dict[str, float]
    status: str
    note: str = ""
    history: Callable[[], pd.DataFrame] | None = None


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples so that values are hashable."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: freeze(node)}


def freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
