"""Run folders -> records: every folder with a ``config.yaml`` below the given directories."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tunelab.results.records import (
    COMPLETED,
    FAILED,
    INCOMPLETE,
    PRUNED,
    UNREADABLE,
    Record,
    ResultsError,
    flatten,
    is_number,
)
from tunelab.run_folder import RunFolder


def find_run_folders(root: str | os.PathLike, on_error: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Run folders below ``root`` (or ``root`` itself), not descending into a run folder
    (its ``.hydra/`` and ``wandb/`` hold ``config.yaml`` files of their own) nor hidden folders.
    A directory that cannot be listed is a ResultsError naming it, or goes to ``on_error(path, why)``."""
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root} is not a directory")

    def unlistable(err: OSError) -> None:
        if on_error is None:
            raise ResultsError(f"cannot list {err.filename}: {err.strerror}") from err
        on_error(Path(err.filename), f"cannot list the directory: {err.strerror}")

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        if "config.yaml" in filenames:
            found.append(Path(dirpath))
            dirnames.clear()
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def collect(roots: Iterable[str | os.PathLike], strict: bool = False) -> list[Record]:
    """The records of every run folder below each of ``roots`` (each folder once, should the roots
    overlap); each root must hold at least one. A folder whose files cannot be read (malformed,
    unreadable) is a record with status ``unreadable`` saying why, or with ``strict`` a ResultsError."""
    folders: dict[Path, Path] = {}
    unlisted: list[Record] = []

    def note(path: Path, why: str) -> None:
        unlisted.append(Record(source=str(path), config={}, metrics={}, status=UNREADABLE, note=why))

    for root in roots:
        before = len(unlisted)
        found = find_run_folders(root, on_error=None if strict else note)
        if not found and len(unlisted) == before:
            raise ResultsError(f"no run folders under {root} (a run folder holds a config.yaml)")
        folders.update((folder.resolve(), folder) for folder in found if folder.resolve() not in folders)
    records = []
    for folder in folders.values():
        try:
            records.append(load_run_folder(folder))
        except ResultsError as err:
            if strict:
                raise
            records.append(_unreadable(folder, err))
    return records + unlisted


def _unreadable(path: Path, err: ResultsError) -> Record:
    """A run folder that cannot be tabulated; its config when that much can be read (for ``--where``)."""
    try:
        config = flatten(_read_config(path))
    except ResultsError:
        config = {}
    return Record(source=str(path), config=config, metrics={}, status=UNREADABLE, note=str(err))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path} is not UTF-8 text: {err}") from err
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err.strerror}") from err


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read(path))
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is malformed JSON: {err}") from err


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(_read(path / "config.yaml"))
    except yaml.YAMLError as err:
        raise ResultsError(f"{path / 'config.yaml'} is malformed YAML: {err}") from err
    if not isinstance(config, dict):
        raise ResultsError(f"{path / 'config.yaml'} does not hold a mapping of config keys")
    return config


def load_run_folder(path: str | os.PathLike) -> Record:
    """The record of one run folder (``config.yaml``, ``status.json``, ``metrics.json``, ``logs/metrics.csv``);
    a ResultsError naming the file that is malformed or cannot be read."""
    path = Path(path)
    config = _read_config(path)
    status_file, metrics_file = path / "status.json", path / "metrics.json"
    status = _read_json(status_file) if status_file.is_file() else {}
    metrics = _read_json(metrics_file) if metrics_file.is_file() else None
    for file, content, kind in ((status_file, status, dict), (metrics_file, metrics, (dict, type(None)))):
        if not isinstance(content, kind):
            raise ResultsError(f"{file} does not hold a JSON object")
    if status.get("status") == FAILED:
        state, note = FAILED, status.get("error") or "status failed"
    elif status.get("status") == PRUNED:
        state, note = PRUNED, status.get("reason") or "status pruned"
    elif status.get("status") == "running" and RunFolder(path).lock_file.is_file() and RunFolder(path).live_owner() is None:
        state, note = INCOMPLETE, ("status running, but no live process holds the run (killed, or out of disk "
                                   "space): re-run its command to resume it")
    elif metrics is None:
        state, note = INCOMPLETE, f"status {status.get('status', 'missing')}, no metrics.json"
    elif status.get("status", COMPLETED) != COMPLETED:
        state, note = INCOMPLETE, f"status {status['status']}"
    else:
        state, note = COMPLETED, ""

    csv = path / "logs" / "metrics.csv"
    return Record(
        source=str(path),
        config=flatten(config),
        metrics=flatten_metrics(metrics or {}),
        status=state,
        note=note,
        history=(lambda: read_history(csv)) if csv.is_file() else None,
    )


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"test": {"accuracy": 0.9}, "params": {...}}`` -> ``{"test/accuracy": 0.9, ...}`` (numbers only)."""
    return {
        f"{section}/{key}": float(value)
        for section, values in metrics.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if is_number(value)
    }


def read_history(csv: Path) -> pd.DataFrame:
    """Lightning's ``CSVLogger`` file: one row per logging event, a ``step`` column."""
    try:
        return pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ResultsError(f"{csv} is malformed: {err}") from err
    except OSError as err:
        raise ResultsError(f"cannot read {csv}: {err.strerror}") from err
