"""Tables -> text: Markdown (with the excluded runs), LaTeX (booktabs, ready to ``\\input``) and CSV."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd

from tunelab.results.aggregate import Problem, Table

LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
DIRECTION_NOTE = "lower is better for losses, times, memory and parameter counts, higher for the rest"


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def markdown_escape(text: str) -> str:
    return text.replace("|", r"\|")


def mean_std(mean: float, std: float, digits: int, pm: str = "±") -> str:
    """``0.9123 ± 0.0100``; the mean alone when there is no std (one run)."""
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" {pm} {std:.{digits}f}")


def _grid(table: Table) -> tuple[list[tuple[str, ...]], list[tuple[tuple[str, ...], str]]]:
    """Row labels, and the data columns as (column label, metric)."""
    cols = table.labels(table.cols)
    return table.labels(table.rows), [(col, metric) for col in cols for metric in table.metrics]


def _row_header(table: Table) -> list[str]:
    return table.rows or ["runs"]


def _row_label(table: Table, row: tuple[str, ...]) -> list[str]:
    return list(row) or ["all"]


def _data_cells(table: Table, row: tuple[str, ...], columns: list[tuple[tuple[str, ...], str]],
                missing: str, pm: str, bold: Callable[[str], str], count: Callable[[int], str]) -> list[str]:
    """One row's data cells: ``mean ± std`` (bold when best) followed by the run count."""
    cells = []
    for col, metric in columns:
        cell = table.cell(row, col, metric)
        if cell is None:
            cells.append(missing)
            continue
        text = mean_std(cell["mean"], cell["std"], table.digits, pm=pm)
        cells.append((bold(text) if cell["best"] else text) + count(cell["n"]))
    return cells


def markdown_table(table: Table) -> str:
    """The table as GitHub Markdown; best cells in bold."""
    rows, columns = _grid(table)
    header = _row_header(table) + [" · ".join([*col, metric]) for col, metric in columns]
    lines = [
        "| " + " | ".join(map(markdown_escape, header)) + " |",
        "|" + "|".join(["---"] * len(_row_header(table)) + ["---:"] * len(columns)) + "|",
    ]
    for row in rows:
        cells = [markdown_escape(v) for v in _row_label(table, row)]
        cells += _data_cells(table, row, columns, "-", "±", lambda t: f"**{t}**", lambda n: f" (n={n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex_table(table: Table) -> str:
    """A booktabs ``tabular`` (no float), every label escaped; best cells in bold."""
    rows, columns = _grid(table)
    n_keys = len(_row_header(table))
    lines = [
        f"% tunelab results: mean $\\pm$ sample std over seeds (n runs); bold: best per column ({DIRECTION_NOTE}).",
        "% Needs \\usepackage{booktabs}.",
        "\\begin{tabular}{" + "l" * n_keys + "c" * len(columns) + "}",
        "\\toprule",
    ]
    if table.cols:
        span = len(table.metrics)
        col_labels = table.labels(table.cols)
        lines.append(
            " & ".join([""] * n_keys + [f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(', '.join(c))}}}" for c in col_labels])
            + r" \\"
        )
        first = n_keys + 1
        lines.append(" ".join(f"\\cmidrule(lr){{{first + i * span}-{first + (i + 1) * span - 1}}}" for i in range(len(col_labels))))
    lines.append(" & ".join(latex_escape(h) for h in _row_header(table) + [m for _, m in columns]) + r" \\")
    lines.append("\\midrule")
    for row in rows:
        cells = [latex_escape(v) for v in _row_label(table, row)]
        cells += _data_cells(table, row, columns, "--", r"$\pm$", lambda t: r"\textbf{" + t + "}",
                             lambda n: r" {\scriptsize (n=" + str(n) + ")}")
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def problems_markdown(problems: Sequence[Problem]) -> str:
    if not problems:
        return "None: every run completed, once.\n"
    return "".join(f"- {p.kind}: `{p.source}`{f' ({p.detail})' if p.detail else ''}\n" for p in problems)


def frame_markdown(frame: pd.DataFrame, digits: int) -> str:
    """A small frame (e.g. the efficiency data) as a Markdown table, floats rounded."""

    def text(value: object) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.{digits}f}"
        return markdown_escape(str(value))

    lines = ["| " + " | ".join(map(text, frame.columns)) + " |", "|" + "|".join(["---"] * len(frame.columns)) + "|"]
    lines += ["| " + " | ".join(map(text, row)) + " |" for row in frame.itertuples(index=False, name=None)]
    return "\n".join(lines) + "\n"


def report(table: Table, problems: Sequence[Problem], sources: Sequence[str], varying: Sequence[str],
           runs: int, extra_sections: Sequence[tuple[str, str]] = ()) -> str:
    """The Markdown file: what was tabulated, the table, extra sections, the excluded runs."""
    groups = len(table.labels([*table.rows, *table.cols]))
    columns = f"one per value of {', '.join(table.cols)} and metric" if table.cols else "one per metric"
    parts = [
        "# Results\n",
        f"Runs: {runs} completed, in {groups} groups, from {', '.join(sources)}.  \n"
        f"Keys that vary: {', '.join(varying) or 'none (seeds only)'}.  \n"
        f"Rows: {', '.join(table.rows) or 'all runs'}; columns: {columns}.  \n"
        f"Cells: mean ± sample std over seeds (n runs); **bold**: best per column ({DIRECTION_NOTE}).\n",
        markdown_table(table),
    ]
    parts += [f"## {title}\n\n{body}" for title, body in extra_sections]
    parts.append(f"## Excluded runs\n\n{problems_markdown(problems)}")
    return "\n".join(parts)

