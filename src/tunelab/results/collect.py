"""Run folders -> records: every folder with a ``config.yaml`` below the given directories."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tunelab.results.records import COMPLETED, FAILED, INCOMPLETE, Record, ResultsError, flatten, is_number


def find_run_folders(root: str | os.PathLike) -> list[Path]:
    """Run folders below ``root`` (or ``root`` itself), not descending into a run folder
    (its ``.hydra/`` and ``wandb/`` hold ``config.yaml`` files of their own) nor hidden folders."""
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root} is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.yaml" in filenames:
            found.append(Path(dirpath))
            dirnames.clear()
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def collect(roots: Iterable[str | os.PathLike]) -> list[Record]:
    """The records of every run folder below each of ``roots`` (each folder once, should the roots
    overlap); each root must hold at least one."""
    folders: dict[Path, Path] = {}
    for root in roots:
        found = find_run_folders(root)
        if not found:
            raise ResultsError(f"no run folders under {root} (a run folder holds a config.yaml)")
        folders.update((folder.resolve(), folder) for folder in found if folder.resolve() not in folders)
    return [load_run_folder(folder) for folder in folders.values()]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is malformed JSON: {err}") from err


def load_run_folder(path: str | os.PathLike) -> Record:
    """The record of one run folder (``config.yaml``, ``status.json``, ``metrics.json``, ``logs/metrics.csv``)."""
    path = Path(path)
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ResultsError(f"{path / 'config.yaml'} is malformed YAML: {err}") from err
    if not isinstance(config, dict):
        raise ResultsError(f"{path / 'config.yaml'} does not hold a mapping of config keys")

    status_file, metrics_file = path / "status.json", path / "metrics.json"
    status = _read_json(status_file) if status_file.is_file() else {}
    metrics = _read_json(metrics_file) if metrics_file.is_file() else None
    if status.get("status") == FAILED:
        state, note = FAILED, status.get("error") or "status failed"
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
