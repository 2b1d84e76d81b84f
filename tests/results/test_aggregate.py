"""Grouping seeds, mean ± sample std, varying keys, problem runs and the errors of bad requests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.results.runfolders import write_run
from tunelab.results.aggregate import build_table, lower_is_better, select, split_problems, varying_keys
from tunelab.results.collect import collect
from tunelab.results.records import Record, ResultsError

ROWS = ["tuning.name", "optimizer.lr"]


def usable(root: Path) -> list[Record]:
    return split_problems(collect([root]))[0]


def test_varying_keys_leave_out_seed_and_per_run_paths(sweep: Path) -> None:
    # tuning.peft.* only lora has: present in some runs, absent in others
    assert varying_keys(usable(sweep)) == ["run_name", "group", "tuning._target_", "tuning.name", "tuning.lr", "optimizer.lr", "tuning.peft.r", "tuning.peft.target_modules"]


def test_cells_are_hand_computed_means_and_sample_stds(sweep: Path) -> None:
    table = build_table(usable(sweep), ["test/accuracy"], rows=ROWS)
    assert table.labels(table.rows) == [("full", "5e-05"), ("full", "0.0001"), ("lora", "5e-05")]  # seeds grouped

    full = table.cell(("full", "5e-05"), (), "test/accuracy")
    assert (full["mean"], full["std"], full["n"]) == (pytest.approx(0.84), pytest.approx(0.04), 3)
    lora = table.cell(("lora", "5e-05"), (), "test/accuracy")
    assert (lora["mean"], lora["std"], lora["n"]) == (pytest.approx(0.72), pytest.approx(0.02 * math.sqrt(2)), 2)
    single = table.cell(("full", "0.0001"), (), "test/accuracy")
    assert single["mean"] == pytest.approx(0.9) and math.isnan(single["std"]) and single["n"] == 1


def test_default_rows_leave_out_the_keys_that_the_others_determine(sweep: Path) -> None:
    # run_name, group, tuning._target_, tuning.lr and tuning.peft.* follow from tuning.name
    assert build_table(usable(sweep), ["test/accuracy"]).rows == ["tuning.name", "optimizer.lr"]
    assert build_table(usable(sweep), ["test/accuracy"], cols=["tuning.name"]).rows == ["optimizer.lr"]


def test_columns_split_by_col_keys(sweep: Path) -> None:
    table = build_table(usable(sweep), ["test/accuracy", "val/macro_f1"], rows=["optimizer.lr"], cols=["tuning.name"])
    assert table.labels(table.cols) == [("full",), ("lora",)]
    assert table.cell(("5e-05",), ("lora",), "test/accuracy")["mean"] == pytest.approx(0.72)
    assert table.cell(("5e-05",), ("full",), "val/macro_f1")["mean"] == pytest.approx(0.70)
    assert table.cell(("0.0001",), ("lora",), "test/accuracy") is None


def test_failed_incomplete_and_duplicated_runs_are_listed_and_left_out(sweep: Path) -> None:
    write_run(sweep, "2_full_again", seed=2, test_accuracy=0.5)  # same config and seed as multirun/2_full
    write_run(sweep, "3_lora_retry", seed=3, tuning="lora", test_accuracy=0.78)  # retry of the failed run: not a duplicate
    runs, problems = split_problems(collect([sweep]))

    assert sorted((p.kind, Path(p.source).name) for p in problems) == [
        ("duplicate", "2_full"), ("duplicate", "2_full_again"), ("failed", "3_lora"), ("incomplete", "4_full"),
    ]
    duplicate = next(p for p in problems if p.source.endswith("2_full_again"))
    assert duplicate.detail == f"same config and seed 2 as {sweep / 'multirun' / '2_full'}"

    table = build_table(runs, ["test/accuracy"], rows=ROWS)
    full = table.cell(("full", "5e-05"), (), "test/accuracy")  # seeds 1 and 3 only
    assert (full["mean"], full["std"], full["n"]) == (pytest.approx(0.84), pytest.approx(0.04 * math.sqrt(2)), 2)
    lora = table.cell(("lora", "5e-05"), (), "test/accuracy")  # seeds 1, 2 and the retried 3
    assert (lora["mean"], lora["n"]) == (pytest.approx(0.74), 3)


def test_same_seed_with_another_config_is_no_duplicate(sweep: Path) -> None:
    assert all(p.kind != "duplicate" for p in split_problems(collect([sweep]))[1])  # 1_full and full-lr share seed 1


def test_best_per_column_respects_the_metric_direction(sweep: Path) -> None:
    table = build_table(usable(sweep), ["test/accuracy", "test/loss", "params/trainable_pct"], rows=ROWS)
    best = table.stats[table.stats["best"]]
    assert sorted(zip(best["metric"], best["tuning.name"], best["optimizer.lr"], strict=True)) == [
        ("params/trainable_pct", "lora", "5e-05"), ("test/accuracy", "full", "0.0001"), ("test/loss", "full", "0.0001"),
    ]


def test_best_is_per_column_and_single_rows_are_not_bold(sweep: Path) -> None:
    table = build_table(usable(sweep), ["test/accuracy"], rows=["optimizer.lr"], cols=["tuning.name"])
    best = table.stats[table.stats["best"]]
    assert list(zip(best["tuning.name"], best["optimizer.lr"], strict=True)) == [("full", "0.0001")]  # lora: one row


@pytest.mark.parametrize(
    ("metric", "lower"),
    [("test/loss", True), ("val/loss", True), ("train/peak_rss_mb", True), ("train/fit_time_s", True),
     ("params/trainable_pct", True), ("test/accuracy", False), ("val/macro_f1", False), ("train/samples_per_s", False)],
)
def test_metric_direction(metric: str, lower: bool) -> None:
    assert lower_is_better(metric) is lower


def test_cells_that_would_mix_configs_are_refused(sweep: Path) -> None:
    with pytest.raises(ResultsError, match=r"differ in optimizer\.lr fall into one table cell; .*--where KEY=VALUE"):
        build_table(usable(sweep), ["test/accuracy"], rows=["tuning.name"])


def test_unknown_metric_lists_the_available_ones(sweep: Path) -> None:
    with pytest.raises(ResultsError, match=r"unknown metric 'test/bleu'; available: .*params/trainable_pct, .*test/accuracy, "
                                           r".*train/peak_rss_mb, .*train/samples_per_s, .*val/macro_f1"):
        build_table(usable(sweep), ["test/accuracy", "test/bleu"])


def test_unknown_key_lists_the_varying_keys(sweep: Path) -> None:
    varying = "run_name, group, tuning._target_, tuning.name, tuning.lr, optimizer.lr, tuning.peft.r, tuning.peft.target_modules"
    with pytest.raises(ResultsError, match=f"unknown key 'tuning.nam' for --rows; keys that vary between the runs: {varying}$"):
        build_table(usable(sweep), ["test/accuracy"], rows=["tuning.nam"])
    with pytest.raises(ResultsError, match="'seed' cannot go in --cols: seeds are averaged over"):
        build_table(usable(sweep), ["test/accuracy"], cols=["seed"])
    with pytest.raises(ResultsError, match=r"tuning\.name given to both --rows and --cols"):
        build_table(usable(sweep), ["test/accuracy"], rows=ROWS, cols=["tuning.name"])


def test_select_keeps_runs_with_the_given_values(sweep: Path) -> None:
    records = collect([sweep])
    assert sorted(Path(r.source).name for r in select(records, {"tuning.name": "lora"})) == ["1_lora", "2_lora", "3_lora"]
    assert [Path(r.source).name for r in select(records, {"optimizer.lr": "0.0001", "seed": "1"})] == ["full-lr"]
    with pytest.raises(ResultsError, match=r"unknown key 'tuning' in --where; config keys: .*tuning\.name"):
        select(records, {"tuning": "lora"})
