"""``tunelab-results``: tables and figures of the runs below some directories, or of a W&B project.

    python -m tunelab.results runs/ --rows tuning.name --cols task.name --metric test/accuracy test/macro_f1
    tunelab-results runs/multirun --metric val/macro_f1 --where task.name=bbc-news --out results/bbc
    tunelab-results --from-wandb my-team/tunelab --rows tuning.name --metric test/accuracy
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tunelab.errors import TunelabError
from tunelab.io import atomic_write_text
from tunelab.results import plots, render
from tunelab.results.aggregate import Table, build_table, select, split_problems, varying_keys
from tunelab.results.collect import collect
from tunelab.results.records import Record, ResultsError
from tunelab.results.wandb_runs import collect_wandb

T = TypeVar("T")
DEFAULT_BY = "tuning.name"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunelab-results",
        description="Tabulate runs (mean ± sample std over seeds) as Markdown, LaTeX and CSV, and plot "
        "parameter efficiency and learning curves. Failed, incomplete, unreadable and duplicated runs are listed, "
        "not averaged.",
        epilog="Keys and metrics may also be given comma-separated: --rows tuning.name,model.name",
    )
    p.add_argument("runs", nargs="*", type=Path, help="directories searched for run folders (folders with a config.yaml)")
    p.add_argument("--from-wandb", metavar="ENTITY/PROJECT", help="read the runs of this W&B project instead")
    p.add_argument("--rows", nargs="+", metavar="KEY", help="config keys of the rows (default: every key that varies)")
    p.add_argument("--cols", nargs="+", default=[], metavar="KEY", help="config keys of the columns (default: none)")
    p.add_argument("--metric", nargs="+", default=["test/accuracy"], metavar="NAME",
                   help="metrics, e.g. test/accuracy val/macro_f1 params/trainable_pct train/samples_per_s (default: test/accuracy)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="keep only runs with this config value")
    p.add_argument("--by", metavar="KEY", help=f"key naming the methods in the efficiency plot (default: {DEFAULT_BY})")
    p.add_argument("--against", metavar="KEY", help="also plot the first metric against this numeric config key "
                   "(e.g. task.data.few_shot.k: a data-size curve), one line per series")
    p.add_argument("--curve", metavar="METRIC", help="validation metric of the learning curves (default: val/ + the first metric's name)")
    p.add_argument("--digits", type=int, default=4, help="decimals in the tables (default: 4)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output directory (default: results)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first run folder whose files are malformed or unreadable (default: list it with "
                   "the excluded runs and go on)")
    return p


def split_commas(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else [v for value in values for v in value.split(",") if v]


def parse_where(items: Sequence[str]) -> dict[str, str]:
    where = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ResultsError(f"--where takes KEY=VALUE, not {item!r}")
        where[key] = value
    return where


def optional(make: Callable[[], T], explicit: bool) -> T | None:
    """``make()``, or ``None`` with a note when it cannot be made and the user did not ask for it by name."""
    try:
        return make()
    except ResultsError as err:
        if explicit:
            raise
        print(f"note: skipped: {err}")
        return None


def write_figures(args: argparse.Namespace, records: list[Record], table: Table) -> tuple[list[tuple[str, str]], list[str]]:
    """Efficiency and learning-curve PNGs and CSVs in ``args.out``; returns their Markdown sections
    and file names."""
    sections, files = [], []
    keys = [*table.rows, *table.cols]
    by = args.by or DEFAULT_BY
    metric = next((m for m in table.metrics if m != plots.TRAINABLE_PCT), None)
    data = optional(lambda: plots.efficiency_data(records, keys, by, metric), explicit=bool(args.by)) if metric else None
    if data is not None:
        atomic_write_text(args.out / "efficiency.csv", data.to_csv(index=False))
        plots.plot_efficiency(data, by, args.out / "efficiency.png")
        body = render.frame_markdown(data, table.digits) + "\n![parameter efficiency](efficiency.png)\n"
        sections.append(("Parameter efficiency", body))
        files += ["efficiency.csv", "efficiency.png"]

    first = table.metrics[0]
    curve_metric = args.curve or ("val/" + first.split("/", 1)[1] if first.startswith(("val/", "test/")) else "val/loss")
    curves = optional(lambda: plots.curves_data(records, keys, curve_metric), explicit=bool(args.curve))
    if curves is not None:
        atomic_write_text(args.out / "curves.csv", curves.to_csv(index=False))
        plots.plot_curves(curves, keys, args.out / "curves.png")
        body = f"{curve_metric} against step, mean ± std over seeds (data: `curves.csv`).\n\n![learning curves](curves.png)\n"
        sections.append(("Learning curves", body))
        files += ["curves.csv", "curves.png"]
    if args.against and metric:
        against = plots.against_data(records, keys, args.against, metric)
        atomic_write_text(args.out / "against.csv", against.to_csv(index=False))
        plots.plot_against(against, args.against, args.out / "against.png")
        body = render.frame_markdown(against, table.digits) + f"\n![{metric} against {args.against}](against.png)\n"
        sections.append((f"{metric} against {args.against}", body))
        files += ["against.csv", "against.png"]
    return sections, files


def run(args: argparse.Namespace) -> None:
    records = collect_wandb(args.from_wandb) if args.from_wandb else collect(args.runs, strict=args.strict)
    records = select(records, parse_where(args.where))
    if not records:
        raise ResultsError(f"no runs with {' and '.join(args.where)}")
    usable, problems = split_problems(records)
    for problem in problems:
        print(f"excluded ({problem.kind}): {problem.source}" + (f": {problem.detail}" if problem.detail else ""))
    if not usable:
        raise ResultsError(f"no completed runs to tabulate ({len(problems)} excluded, listed above)")
    table = build_table(usable, split_commas(args.metric), split_commas(args.rows), split_commas(args.cols), args.digits)

    args.out.mkdir(parents=True, exist_ok=True)
    sections, files = ([], []) if args.no_plots else write_figures(args, usable, table)
    sources = [args.from_wandb] if args.from_wandb else [str(r) for r in args.runs]
    atomic_write_text(args.out / "table.md", render.report(table, problems, sources, varying_keys(usable), len(usable), sections))
    atomic_write_text(args.out / "table.tex", render.latex_table(table))
    atomic_write_text(args.out / "table.csv", table.stats.to_csv(index=False))
    print(render.markdown_table(table))
    files = ["table.md", "table.tex", "table.csv", *files]
    print(f"{len(usable)} runs tabulated, {len(problems)} excluded; wrote to {args.out}/: {', '.join(files)}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if bool(args.runs) == bool(args.from_wandb):
        p.error("give directories of run folders or --from-wandb ENTITY/PROJECT (one of the two)")
    try:
        run(args)
    except TunelabError as err:
        print(f"tunelab-results: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. an --out directory that cannot be written
        print(f"tunelab-results: error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    return 0
