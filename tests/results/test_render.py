"""Markdown with bold bests and the excluded runs, LaTeX that compiles (balanced, escaped), CSV."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest

from tunelab.results.aggregate import Table, build_table, split_problems, varying_keys
from tunelab.results.collect import collect
from tunelab.results.render import latex_escape, latex_table, markdown_table, report

METRICS = ["test/accuracy", "val/macro_f1", "params/trainable_pct"]


@pytest.fixture
def table(sweep: Path) -> Table:
    return build_table(split_problems(collect([sweep]))[0], METRICS, rows=["tuning.name", "optimizer.lr"])


def test_markdown_shows_mean_std_n_and_bolds_the_best(table: Table) -> None:
    assert markdown_table(table).splitlines() == [
        "| tuning.name | optimizer.lr | test/accuracy | val/macro_f1 | params/trainable_pct |",
        "|---|---|---:|---:|---:|",
        "| full | 5e-05 | 0.8400 ± 0.0400 (n=3) | **0.7000 ± 0.0100** (n=3) | 100.0000 ± 0.0000 (n=3) |",
        "| full | 0.0001 | **0.9000** (n=1) | 0.6900 (n=1) | 100.0000 (n=1) |",
        "| lora | 5e-05 | 0.7200 ± 0.0283 (n=2) | 0.6950 ± 0.0071 (n=2) | **0.5000 ± 0.0000** (n=2) |",
    ]


def data_columns(line: str) -> int:
    """Columns a LaTeX row spans: cells, with \\multicolumn{k} counting k."""
    spans = [int(k) for k in re.findall(r"\\multicolumn\{(\d+)\}", line)]
    return line.count("&") + 1 + sum(k - 1 for k in spans)


@pytest.mark.parametrize("cols", [[], ["tuning.name"]])
def test_latex_is_a_balanced_booktabs_tabular_with_escaped_labels(sweep: Path, cols: list[str]) -> None:
    runs = split_problems(collect([sweep]))[0]
    tex = latex_table(build_table(runs, METRICS, rows=["optimizer.lr"] if cols else ["tuning.name", "optimizer.lr"], cols=cols))
    lines = [line for line in tex.splitlines() if not line.startswith("%")]
    spec = re.fullmatch(r"\\begin\{tabular\}\{([lc]+)\}", lines[0])
    assert spec and lines[-1] == r"\end{tabular}"
    assert [line for line in lines if line in (r"\toprule", r"\midrule", r"\bottomrule")] == [r"\toprule", r"\midrule", r"\bottomrule"]
    assert lines[1] == r"\toprule" and lines[-2] == r"\bottomrule"
    rows = [line for line in lines if line.endswith(r"\\")]
    assert len(rows) == (2 if cols else 1) + (2 if cols else 3)
    assert {data_columns(row) for row in rows} == {len(spec.group(1))}
    body = [row for row in rows if "&" in row and "multicolumn" not in row]
    assert len({row.count("&") for row in body}) == 1  # same number of & in every row
    assert r"val/macro\_f1" in tex and r"params/trainable\_pct" in tex
    text = "\n".join(lines).replace("&", "").replace(r"$\pm$", "")  # the column separators and the one math symbol
    assert not re.search(r"(?<!\\)[_%#$]", text)
    # bold: accuracy, F1, fewest parameters; with columns, per column: the tied 100% of full both count
    assert tex.count(r"\textbf{") == (4 if cols else 3) and r"\textbf{0.9000} {\scriptsize (n=1)}" in tex
    if cols:
        assert r"\multicolumn{3}{c}{full} & \multicolumn{3}{c}{lora} \\" in tex
        assert r"\cmidrule(lr){2-4} \cmidrule(lr){5-7}" in tex


def test_latex_escape_covers_the_specials() -> None:
    assert latex_escape(r"a_b & 50% #1 $x {y} ~^\ ") == (
        r"a\_b \& 50\% \#1 \$x \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{} "
    )


def test_report_holds_the_table_and_lists_excluded_runs(sweep: Path, table: Table) -> None:
    runs, problems = split_problems(collect([sweep]))
    md = report(table, problems, [str(sweep)], varying_keys(runs), len(runs), [("Extra", "body\n")])
    assert "Runs: 6 completed, in 3 groups, from" in md and markdown_table(table) in md
    assert "## Extra\n\nbody\n" in md
    excluded = md.split("## Excluded runs\n\n")[1]
    assert excluded.splitlines() == [
        f"- failed: `{sweep / 'multirun' / '3_lora'}` (RuntimeError: out of memory)",
        f"- incomplete: `{sweep / 'multirun' / '4_full'}` (status running, no metrics.json)",
    ]


def test_csv_is_tidy_with_one_row_per_cell(table: Table) -> None:
    frame = pd.read_csv(io.StringIO(table.stats.to_csv(index=False)), dtype={"optimizer.lr": str})
    assert list(frame.columns) == ["tuning.name", "optimizer.lr", "metric", "mean", "std", "n", "best"]
    assert len(frame) == 3 * len(METRICS)
    row = frame[(frame["tuning.name"] == "lora") & (frame["metric"] == "test/accuracy")].iloc[0]
    assert (row["mean"], row["std"], row["n"], row["best"]) == (pytest.approx(0.72), pytest.approx(0.02 * 2**0.5), 2, False)
