"""tunelab-results as a user meets it: the files it writes, and one clear message for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.results.runfolders import write_run
from tunelab.results.cli import main

ROWS = "tuning.name,optimizer.lr"


def test_writes_tables_figures_and_lists_excluded_runs(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([str(sweep), "--rows", ROWS, "--metric", "test/accuracy", "val/macro_f1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"excluded (failed): {sweep / 'multirun' / '3_lora'}: RuntimeError: out of memory" in printed
    assert f"excluded (incomplete): {sweep / 'multirun' / '4_full'}: status running, no metrics.json" in printed
    assert "| full | 0.0001 | **0.9000** (n=1) | 0.6900 (n=1) |" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.csv", "curves.png", "efficiency.csv", "efficiency.png", "table.csv", "table.md", "table.tex",
    ]

    md = (out / "table.md").read_text()
    assert "| lora | 5e-05 | 0.7200 ± 0.0283 (n=2) | 0.6950 ± 0.0071 (n=2) |" in md
    assert "## Parameter efficiency" in md and "![learning curves](curves.png)" in md
    assert f"- failed: `{sweep / 'multirun' / '3_lora'}` (RuntimeError: out of memory)" in md

    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    efficiency = pd.read_csv(out / "efficiency.csv", dtype={"optimizer.lr": str})
    merged = efficiency.merge(table, on=["tuning.name", "optimizer.lr", "metric"], suffixes=("", "_table"))
    assert len(merged) == 3 and (merged["mean"] == merged["mean_table"]).all() and (merged["n"] == merged["n_table"]).all()
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["metric"]) == {"val/accuracy"} and len(curves) == 9  # 3 groups x 3 validations


def test_against_plots_the_metric_over_a_numeric_key(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(sweep), "--rows", ROWS, "--metric", "test/accuracy", "--against", "optimizer.lr", "--out", str(out)]) == 0
    assert (out / "against.png").is_file() and "![test/accuracy against optimizer.lr](against.png)" in (out / "table.md").read_text()
    against = pd.read_csv(out / "against.csv")
    assert against[["tuning.name", "optimizer.lr", "n"]].values.tolist() == [["full", 5e-05, 3], ["full", 1e-04, 1], ["lora", 5e-05, 2]]


def test_where_and_no_plots(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([str(sweep), "--where", "optimizer.lr=5e-05", "--metric", "test/accuracy", "--no-plots", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md", "table.tex"]
    printed = capsys.readouterr().out
    assert "| tuning.name | test/accuracy |" in printed and "| lora | 0.7200 ± 0.0283 (n=2) |" in printed


def test_figures_that_cannot_be_made_are_skipped_unless_asked_for(sweep: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(sweep), "--rows", ROWS, "--metric", "test/macro_f1", "--out", str(tmp_path / "out")]
    assert main(args) == 0  # the default curve metric, val/macro_f1, is not in the logs
    assert "note: skipped: no run logged 'val/macro_f1' during training" in capsys.readouterr().out
    assert not (tmp_path / "out" / "curves.png").exists() and (tmp_path / "out" / "efficiency.png").exists()
    assert main([*args, "--curve", "val/macro_f1"]) == 2
    assert "error: no run logged 'val/macro_f1' during training; logged validation metrics: val/accuracy" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metric", "test/bleu"], "unknown metric 'test/bleu'; available: data/test, data/train, data/validation, params/total, "),
        (["--rows", "lr"], "unknown key 'lr' for --rows; keys that vary between the runs: run_name, group, tuning._target_"),
        (["--rows", "tuning.name"], "runs that differ in optimizer.lr fall into one table cell"),
        (["--where", "tuning.name"], "--where takes KEY=VALUE, not 'tuning.name'"),
        (["--where", "tuning.name=lora", "--where", "seed=3"], "no completed runs to tabulate (1 excluded, listed above)"),
        (["--where", "tuning.name=prefix"], "no runs with tuning.name=prefix"),
    ],
)
def test_bad_requests_exit_2_with_one_message(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             extra: list[str], message: str) -> None:
    assert main([str(sweep), "--out", str(tmp_path / "out"), *extra]) == 2
    assert f"tunelab-results: error: {message}" in capsys.readouterr().err


def test_malformed_metrics_json_is_listed_and_the_table_made(sweep: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """One malformed metrics.json used to abort the whole table (exit 2); now it is listed with the excluded runs."""
    bad = sweep / "multirun" / "2_full"
    (bad / "metrics.json").write_text('{"test": ')
    out = tmp_path / "out"
    assert main([str(sweep), "--rows", ROWS, "--no-plots", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    reason = f"{bad / 'metrics.json'} is malformed JSON: Expecting value: line 1 column 10 (char 9)"
    assert f"excluded (unreadable): {bad}: {reason}" in printed
    assert "| full | 5e-05 | 0.8400 ± 0.0566 (n=2) |" in printed  # seeds 1 and 3 of full
    assert f"- unreadable: `{bad}` ({reason})" in (out / "table.md").read_text()


def test_strict_stops_at_a_malformed_metrics_json_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "runs", "run")
    (run / "metrics.json").write_text('{"test": ')
    assert main([str(tmp_path / "runs"), "--strict", "--out", str(tmp_path / "out")]) == 2
    assert f"tunelab-results: error: {run / 'metrics.json'} is malformed JSON: Expecting value: line 1 column 10" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2  # listed, then nothing left to tabulate
    assert "tunelab-results: error: no completed runs to tabulate (1 excluded, listed above)" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_named(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.write_text("a file, not a directory")  # was a FileExistsError traceback
    assert main([str(sweep), "--rows", ROWS, "--no-plots", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"tunelab-results: error: {out}: File exists\n"


def test_source_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "give directories of run folders or --from-wandb" in capsys.readouterr().err


def test_python_m_on_an_empty_directory_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    proc = subprocess.run([sys.executable, "-m", "tunelab.results", str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"tunelab-results: error: no run folders under {tmp_path / 'runs'} (a run folder holds a config.yaml)\n"
