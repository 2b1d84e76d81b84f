"""Records -> tables: which config keys vary, seeds grouped, mean ± sample std, problem runs set aside."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tunelab.results.records import COMPLETED, Record, ResultsError

# Keys that differ between runs by nature, not by design; ``seed`` is what a group averages over.
IGNORED_KEYS = frozenset({"seed", "run_dir", "ckpt_path", "progress", "run_id", "resume", "logger.wandb.id"})
IGNORED_PREFIXES = ("paths.",)
# Names made of other keys (``run_name: ${task.name}-${model.name}-${tuning.name}``): the first keys
# left out of the default rows when the other keys tell the groups apart.
NAME_KEYS = ("run_name", "group")
UNSET = "(unset)"


@dataclass(frozen=True)
class Problem:
    """A run left out of the tables: ``failed``, ``incomplete``, ``pruned`` (a search trial), ``unreadable`` or
    ``duplicate``."""

    kind: str
    source: str
    detail: str


@dataclass
class Table:
    """``stats`` holds one row per cell: the row keys, the column keys, ``metric``, ``mean``,
    ``std`` (sample std, NaN for one run), ``n`` and ``best``; key values are display strings."""

    rows: list[str]
    cols: list[str]
    metrics: list[str]
    stats: pd.DataFrame
    digits: int

    def labels(self, keys: Sequence[str]) -> list[tuple[str, ...]]:
        """The distinct values of ``keys``, sorted (numbers by value)."""
        return sorted(set(self.stats[list(keys)].itertuples(index=False, name=None)), key=_natural)

    def cell(self, row: tuple[str, ...], col: tuple[str, ...], metric: str) -> pd.Series | None:
        mask = self.stats["metric"] == metric
        for key, value in zip([*self.rows, *self.cols], [*row, *col], strict=True):
            mask &= self.stats[key] == value
        hits = self.stats[mask]
        return None if hits.empty else hits.iloc[0]


def lower_is_better(metric: str) -> bool:
    """Losses, times, memory and parameter counts are better low; every other metric high."""
    name = metric.rsplit("/", 1)[-1]
    return "loss" in name or name.endswith(("_time_s", "_mb")) or metric.startswith("params/")


def comparable_config(record: Record) -> dict[str, Any]:
    """The keys that define a run's setting: the config without the seed, paths, and values
    that contain the run's own folder (checkpoint dirs, logger save dirs)."""
    own = [str(record.config[k]) for k in ("paths.output_dir", "run_dir") if record.config.get(k)]
    return {
        key: value
        for key, value in record.config.items()
        if key not in IGNORED_KEYS
        and not key.startswith(IGNORED_PREFIXES)
        and not (isinstance(value, str) and any(folder in value for folder in own))
    }


def format_value(value: Any) -> str:
    """A config value as a table label: YAML-like, lists as ``[a, b]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def split_problems(records: Iterable[Record]) -> tuple[list[Record], list[Problem]]:
    """Completed runs to tabulate, and the runs set aside: failed, incomplete, and every copy of a
    completed run whose config and seed another completed run shares."""
    records = list(records)
    problems = [Problem(r.status, r.source, r.note) for r in records if r.status != COMPLETED]
    twins: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        if record.status == COMPLETED:
            key = tuple(sorted(comparable_config(record).items(), key=lambda kv: kv[0]))
            twins[(key, format_value(record.config.get("seed")))].append(record)
    usable = []
    for (_, seed), copies in twins.items():
        if len(copies) == 1:
            usable += copies
            continue
        for copy in copies:
            others = ", ".join(c.source for c in copies if c is not copy)
            problems.append(Problem("duplicate", copy.source, f"same config and seed {seed} as {others}"))
    return usable, problems


def select(records: Iterable[Record], where: dict[str, str]) -> list[Record]:
    """The records whose config has ``key == value`` (compared as labels) for every item of ``where``."""
    records = list(records)
    known = set().union(*(r.config for r in records))
    for key in where:
        if key not in known:
            raise ResultsError(f"unknown key {key!r} in --where; config keys: {', '.join(sorted(known))}")
    return [r for r in records if all(key in r.config and format_value(r.config[key]) == v for key, v in where.items())]


def varying_keys(records: Sequence[Record]) -> list[str]:
    """The comparable config keys whose value (or presence) differs between ``records``."""
    configs = [comparable_config(r) for r in records]
    keys = dict.fromkeys(k for c in configs for k in c)
    return [k for k in keys if len({format_value(c[k]) if k in c else UNSET for c in configs}) > 1]


def run_frame(records: Sequence[Record], keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run: ``keys`` as labels, ``seed``, ``source`` and ``metrics`` (NaN where absent)."""
    rows = []
    for r in records:
        config = comparable_config(r)
        row = {k: format_value(config[k]) if k in config else UNSET for k in keys}
        rows.append({**row, "seed": r.config.get("seed"), "source": r.source, **{m: r.metrics.get(m, math.nan) for m in metrics}})
    return pd.DataFrame(rows, columns=[*keys, "seed", "source", *metrics])


def _natural(label: tuple[str, ...]) -> tuple[tuple[int, float, str], ...]:
    """Sort numbers by value, before text."""

    def key(value: str) -> tuple[int, float, str]:
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)

    return tuple(key(v) for v in label)


def groups(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[tuple[str, ...], pd.DataFrame]]:
    """``(label, part)`` per distinct value of ``keys``, numbers sorted by value; one group when ``keys`` is empty."""
    if not keys:
        return [((), frame)]
    return sorted(frame.groupby(list(keys), sort=False, dropna=False), key=lambda group: _natural(group[0]))


def summarize(frame: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and n of each metric over the runs sharing the values of ``keys``."""
    rows = []
    for label, part in groups(frame, keys):
        for metric in metrics:
            values = part[metric].dropna()
            if len(values):
                std = values.std(ddof=1) if len(values) > 1 else math.nan
                rows.append({**dict(zip(keys, label, strict=True)), "metric": metric, "mean": values.mean(), "std": std, "n": len(values)})
    return pd.DataFrame(rows, columns=[*keys, "metric", "mean", "std", "n"])


def clashing_keys(frame: pd.DataFrame, keys: Sequence[str], varying: Sequence[str]) -> list[str]:
    """The varying keys, beyond ``keys``, that take several values among runs sharing ``keys``'s values."""
    rest = [k for k in varying if k not in keys]
    if not rest:
        return []
    counts = frame.groupby(list(keys), dropna=False)[rest].nunique() if keys else frame[rest].nunique().to_frame().T
    return [k for k in rest if (counts[k] > 1).any()]


def default_rows(frame: pd.DataFrame, varying: Sequence[str], cols: Sequence[str]) -> list[str]:
    """The varying keys not in ``cols``, less those that the others determine (``tuning.lr``,
    ``tuning.peft.r``, ... with ``tuning.name``): names first, then the deepest and latest keys;
    ``*.name`` keys stay."""
    rows = [k for k in varying if k not in cols]
    others = sorted(reversed([k for k in rows if k not in NAME_KEYS and not k.endswith(".name")]), key=lambda k: -k.count("."))
    for key in [*NAME_KEYS, *others]:
        rest = [k for k in rows if k != key]
        if key in rows and not clashing_keys(frame, [*rest, *cols], varying):
            rows = rest
    return rows


def check_metrics(records: Sequence[Record], metrics: Sequence[str]) -> None:
    available = sorted(set().union(*(r.metrics for r in records)))
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ResultsError(f"unknown metric {', '.join(map(repr, unknown))}; available: {', '.join(available)}")


def check_keys(records: Sequence[Record], keys: Sequence[str], option: str, varying: Sequence[str]) -> None:
    known = set().union(*(comparable_config(r) for r in records))
    hint = ", ".join(varying) or "none, the runs differ only in seed"
    for key in keys:
        if key in known:
            continue
        if any(key in r.config for r in records):
            raise ResultsError(f"{key!r} cannot go in {option}: seeds are averaged over, paths and run folders ignored; "
                               f"keys that vary between the runs: {hint}")
        raise ResultsError(f"unknown key {key!r} for {option}; keys that vary between the runs: {hint}")


def build_table(
    records: Sequence[Record],
    metrics: Sequence[str],
    rows: Sequence[str] | None = None,
    cols: Sequence[str] = (),
    digits: int = 4,
) -> Table:
    """The table of ``metrics`` over completed, distinct ``records``: one row per value of ``rows``
    (default: every varying key not in ``cols``), a column per value of ``cols`` and metric."""
    varying = varying_keys(records)
    check_metrics(records, metrics)
    check_keys(records, cols, "--cols", varying)
    check_keys(records, rows or (), "--rows", varying)
    if rows is not None and set(rows) & set(cols):
        raise ResultsError(f"{', '.join(sorted(set(rows) & set(cols)))} given to both --rows and --cols")
    frame = run_frame(records, list(dict.fromkeys([*varying, *(rows or ()), *cols])), metrics)
    rows = list(rows) if rows is not None else default_rows(frame, varying, cols)
    clash = clashing_keys(frame, [*rows, *cols], varying)
    if clash:
        raise ResultsError(
            f"runs that differ in {', '.join(clash)} fall into one table cell; add these keys to --rows or --cols, "
            "or keep one value with --where KEY=VALUE"
        )
    stats = summarize(frame, [*rows, *cols], metrics)
    stats["best"] = False
    for (*_, metric), part in stats.groupby([*cols, "metric"], sort=False):
        if len(part) > 1:
            rounded = part["mean"].round(digits)
            best = rounded.min() if lower_is_better(metric) else rounded.max()
            stats.loc[part.index[rounded == best], "best"] = True
    return Table(rows=rows, cols=list(cols), metrics=list(metrics), stats=stats, digits=digits)
