"""Figures and the data behind them: a metric against the trainable-parameter share (one point per
method, error bars over seeds), validation learning curves (mean over seeds, ± std band), and a metric
against a numeric config key such as ``task.data.few_shot.k`` (one line per series, error bars)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from adjustText import adjust_text
from matplotlib.figure import Figure  # Figure renders with Agg on savefig; pyplot's global state is not used
from matplotlib.ticker import NullFormatter

from tunelab.results.aggregate import check_keys, groups, run_frame, summarize, varying_keys
from tunelab.results.records import Record, ResultsError

TRAINABLE_PCT = "params/trainable_pct"


def efficiency_data(records: Sequence[Record], keys: Sequence[str], by: str, metric: str) -> pd.DataFrame:
    """One row per value of ``by`` within each series (the values of ``keys`` other than ``by``):
    mean trainable-parameter percentage, and mean, sample std and n of ``metric`` over seeds."""
    check_keys(records, [by], "--by", varying_keys(records))
    if not any(TRAINABLE_PCT in r.metrics for r in records):
        raise ResultsError(f"no run has {TRAINABLE_PCT} for the parameter-efficiency plot")
    keys = [*(k for k in keys if k != by), by]
    stats = summarize(run_frame(records, keys, [metric, TRAINABLE_PCT]), keys, [metric, TRAINABLE_PCT])
    pct = stats[stats["metric"] == TRAINABLE_PCT][[*keys, "mean"]].rename(columns={"mean": "trainable_pct"})
    data = stats[stats["metric"] == metric].merge(pct, on=keys, how="left")
    return data[[*keys, "trainable_pct", "metric", "mean", "std", "n"]].reset_index(drop=True)


def plot_efficiency(data: pd.DataFrame, by: str, path: Path) -> Figure:
    """``efficiency_data`` as a scatter with error bars, one marker series per series, points named by ``by``
    (names moved apart by ``adjustText`` where points crowd, with a line to their point)."""
    series = list(data.columns[: data.columns.get_loc(by)])
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    names = []
    for label, part in groups(data, series):
        ax.errorbar(part["trainable_pct"], part["mean"], yerr=part["std"].fillna(0), fmt="o", capsize=4,
                    label=", ".join(label) if series else None)
        names += [ax.text(x, y, name, fontsize=8) for x, y, name in zip(part["trainable_pct"], part["mean"], part[by], strict=True)
                  if pd.notna(x) and pd.notna(y)]
    pct = data["trainable_pct"].dropna()
    if len(pct) and pct.min() > 0 and pct.max() / pct.min() > 20:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the point names
    ax.set_xlabel("trainable parameters (%)")
    ax.set_ylabel(f"{data['metric'].iloc[0]} (mean ± std over seeds)")
    ax.set_title(f"Parameter efficiency by {by}")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(title=", ".join(series), fontsize=8)
    if names:  # last, on the final layout (adjustText's advice); names also keep off the points
        fig.draw_without_rendering()
        adjust_text(names, x=data["trainable_pct"].tolist(), y=data["mean"].tolist(), ax=ax,
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})
    fig.savefig(path, dpi=150)
    return fig


def curve(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``step`` and ``metric`` of the validations during training: the re-validation of the best
    checkpoint after fitting (logged with the test metrics, at or after their step) is left out."""
    if metric not in history or "step" not in history:
        return pd.DataFrame(columns=["step", metric])
    points = history.dropna(subset=[metric])
    tested = history.filter(regex="^test/").notna().any(axis=1)
    if tested.any():
        points = points[points["step"] < history.loc[tested, "step"].min()]
    return points[["step", metric]].drop_duplicates("step", keep="last")


def curves_data(records: Sequence[Record], keys: Sequence[str], metric: str) -> pd.DataFrame:
    """Per group (the values of ``keys``) and step: mean, sample std and n of ``metric`` over seeds."""
    runs = run_frame(records, keys, [])
    by_source = {r.source: r for r in records}
    parts, logged = [], set()
    for row in runs.to_dict("records"):
        record = by_source[row["source"]]
        if record.history is None:
            continue
        history = record.history()
        logged |= {c for c in history.columns if c.startswith("val/")}
        parts.append(curve(history, metric).assign(**{k: row[k] for k in keys}))
    if not any(len(p) for p in parts):
        available = ", ".join(sorted(logged)) or "none (no run has a metrics history)"
        raise ResultsError(f"no run logged {metric!r} during training; logged validation metrics: {available}")
    points = pd.concat([p for p in parts if len(p)], ignore_index=True)
    stats = points.groupby([*keys, "step"], sort=False)[metric].agg(["mean", "std", "count"]).reset_index()
    stats = stats.rename(columns={"count": "n"}).assign(metric=metric)
    ordered = [part.sort_values("step") for _, part in groups(stats, keys)]
    return pd.concat(ordered, ignore_index=True)[[*keys, "metric", "step", "mean", "std", "n"]]


def plot_curves(data: pd.DataFrame, keys: Sequence[str], path: Path) -> None:
    """``curves_data`` as one line per group with a ± std band."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, part in groups(data, keys):
        line, = ax.plot(part["step"], part["mean"], marker=".", label=", ".join(label) or "all runs")
        ax.fill_between(part["step"], part["mean"] - part["std"], part["mean"] + part["std"], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{data['metric'].iloc[0]} (mean ± std over seeds)")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(title=", ".join(keys) or None, fontsize=8)
    fig.savefig(path, dpi=150)


def against_data(records: Sequence[Record], keys: Sequence[str], against: str, metric: str) -> pd.DataFrame:
    """Per series (the values of ``keys`` other than ``against``) and value of ``against`` (a number):
    mean, sample std and n of ``metric`` over seeds, in increasing ``against``."""
    check_keys(records, [against], "--against", varying_keys(records))
    series = [k for k in keys if k != against]
    frame = run_frame(records, [*series, against], [metric])
    x = pd.to_numeric(frame[against], errors="coerce")
    if x.isna().any():
        bad = sorted(set(frame.loc[x.isna(), against].astype(str)))
        raise ResultsError(f"--against {against}: needs numbers, and some runs have {', '.join(bad)}")
    stats = summarize(frame.assign(**{against: x}), [*series, against], [metric])
    return stats.sort_values([*series, against], kind="stable").reset_index(drop=True)[[*series, against, "metric", "mean", "std", "n"]]


def plot_against(data: pd.DataFrame, against: str, path: Path) -> None:
    """``against_data`` as one line per series with error bars; a log x axis where the values span 10x or more."""
    series = list(data.columns[: data.columns.get_loc(against)])
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, part in groups(data, series):
        ax.errorbar(part[against], part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=4,
                    label=", ".join(label) if series else None)
    x = data[against]
    if x.min() > 0 and x.max() / x.min() >= 10:
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(x)), [f"{v:g}" for v in sorted(set(x))])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(against)
    ax.set_ylabel(f"{data['metric'].iloc[0]} (mean ± std over seeds)")
    ax.set_title(f"{data['metric'].iloc[0]} against {against}")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(title=", ".join(series), fontsize=8)
    fig.savefig(path, dpi=150)
