"""The data behind the figures match the table's aggregates; the figures are written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tunelab.results.aggregate import build_table, split_problems
from tunelab.results.collect import collect
from tunelab.results.plots import (
    against_data,
    curve,
    curves_data,
    efficiency_data,
    plot_against,
    plot_curves,
    plot_efficiency,
)
from tunelab.results.records import ResultsError

ROWS = ["tuning.name", "optimizer.lr"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_efficiency_data_match_the_table(sweep: Path, tmp_path: Path) -> None:
    runs = split_problems(collect([sweep]))[0]
    table = build_table(runs, ["test/accuracy", "params/trainable_pct"], rows=ROWS)
    data = efficiency_data(runs, ROWS, "tuning.name", "test/accuracy")

    assert list(data.columns) == ["optimizer.lr", "tuning.name", "trainable_pct", "metric", "mean", "std", "n"]
    assert list(zip(data["optimizer.lr"], data["tuning.name"], strict=True)) == [("5e-05", "full"), ("5e-05", "lora"), ("0.0001", "full")]
    for point in data.itertuples(index=False):
        row = (point[1], point[0])
        cell = table.cell(row, (), "test/accuracy")
        assert (point.mean, point.n) == (cell["mean"], cell["n"])
        assert point.std == pytest.approx(cell["std"], nan_ok=True)
        assert point.trainable_pct == table.cell(row, (), "params/trainable_pct")["mean"]
    assert data["trainable_pct"].tolist() == [100.0, 0.5, 100.0]

    plot_efficiency(data, "tuning.name", tmp_path / "efficiency.png")
    assert (tmp_path / "efficiency.png").read_bytes().startswith(PNG)


def test_efficiency_without_parameter_counts_is_an_error(sweep: Path) -> None:
    runs = split_problems(collect([sweep]))[0]
    for run in runs:
        del run.metrics["params/trainable_pct"]
    with pytest.raises(ResultsError, match="no run has params/trainable_pct"):
        efficiency_data(runs, ROWS, "tuning.name", "test/accuracy")
    with pytest.raises(ResultsError, match="unknown key 'method' for --by"):
        efficiency_data(runs, ROWS, "method", "test/accuracy")


def test_curve_leaves_out_the_best_checkpoints_revalidation() -> None:
    history = pd.DataFrame({
        "step": [9, 9, 19, 19, 20, 20],
        "val/accuracy": [None, 0.5, None, 0.7, 0.7, None],
        "test/accuracy": [None, None, None, None, None, 0.68],
    })
    assert curve(history, "val/accuracy").values.tolist() == [[9, 0.5], [19, 0.7]]
    assert curve(history, "val/macro_f1").empty


def test_curves_are_means_over_seeds_per_group(sweep: Path, tmp_path: Path) -> None:
    runs = split_problems(collect([sweep]))[0]
    data = curves_data(runs, ROWS, "val/accuracy")
    assert list(data.columns) == [*ROWS, "metric", "step", "mean", "std", "n"]

    full = data[(data["tuning.name"] == "full") & (data["optimizer.lr"] == "5e-05")]
    assert full["step"].tolist() == [9, 19, 29]  # not the re-validation at step 30
    assert full["mean"].tolist() == pytest.approx([0.5, 0.62, 0.72])  # seeds 1-3: 0.6 + seed / 100, 0.7 + seed / 100
    assert full["std"].tolist() == pytest.approx([0.0, 0.01, 0.01]) and full["n"].tolist() == [3, 3, 3]
    lora = data[data["tuning.name"] == "lora"]
    assert lora["mean"].tolist() == pytest.approx([0.5, 0.615, 0.715]) and lora["n"].tolist() == [2, 2, 2]

    plot_curves(data, ROWS, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)


def test_curves_of_an_unlogged_metric_list_the_logged_ones(sweep: Path) -> None:
    runs = split_problems(collect([sweep]))[0]
    with pytest.raises(ResultsError, match="no run logged 'val/macro_f1' during training; logged validation metrics: val/accuracy, val/loss"):
        curves_data(runs, ROWS, "val/macro_f1")


def test_a_metric_against_a_numeric_key_matches_the_table(sweep: Path, tmp_path: Path) -> None:
    """The data-size curve (e.g. --against task.data.few_shot.k): one line per series, x as numbers in order."""
    runs = split_problems(collect([sweep]))[0]
    table = build_table(runs, ["test/accuracy"], rows=ROWS)
    data = against_data(runs, ROWS, "optimizer.lr", "test/accuracy")
    assert list(data.columns) == ["tuning.name", "optimizer.lr", "metric", "mean", "std", "n"]
    assert list(zip(data["tuning.name"], data["optimizer.lr"], strict=True)) == [("full", 5e-05), ("full", 1e-04), ("lora", 5e-05)]
    for point in data.itertuples(index=False):
        cell = table.cell((point[0], f"{point[1]:g}"), (), "test/accuracy")
        assert (point.mean, point.n) == (cell["mean"], cell["n"])
    plot_against(data, "optimizer.lr", tmp_path / "against.png")
    assert (tmp_path / "against.png").read_bytes().startswith(PNG)
    with pytest.raises(ResultsError, match=r"--against tuning.name: needs numbers, and some runs have full, lora"):
        against_data(runs, ROWS, "tuning.name", "test/accuracy")


def test_efficiency_point_names_do_not_overlap(tmp_path: Path) -> None:
    """Methods whose points nearly coincide (prefix and ptuning in the BBC ablation) keep readable names."""
    names = ["prefix", "ptuning", "prompt", "lora", "ia3", "full"]
    data = pd.DataFrame({"tuning.name": names, "trainable_pct": [0.21, 0.22, 0.21, 0.5, 0.49, 100.0],
                         "metric": "test/accuracy", "mean": [0.60, 0.605, 0.598, 0.9, 0.9, 0.95], "std": 0.01, "n": 3})
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plot_efficiency(data, "tuning.name", tmp_path / "efficiency.png")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # the saved layout
    renderer = canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(names)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
