"""The W&B adapter on a recorded public-API response gives the same tables as the run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.results import record_wandb
from tunelab.results import wandb_runs
from tunelab.results.aggregate import build_table, split_problems
from tunelab.results.cli import main
from tunelab.results.collect import collect
from tunelab.results.plots import curves_data
from tunelab.results.records import COMPLETED, FAILED, INCOMPLETE, ResultsError
from tunelab.results.render import latex_table, markdown_table
from tunelab.results.wandb_runs import collect_wandb

RECORDED = Path(__file__).with_name("wandb_runs.json")  # the `sweep` fixture's runs as W&B holds them
METRICS = ["test/accuracy", "val/macro_f1", "params/trainable_pct"]
ROWS = ["tuning.name", "optimizer.lr"]


class RecordedRun:
    """The attributes of ``wandb.apis.public.Run`` that the adapter reads, from the recording."""

    def __init__(self, recorded: dict[str, Any]):
        for name in ("id", "name", "state", "group", "job_type", "tags", "config", "summary"):
            setattr(self, name, recorded[name])
        self._history = recorded["history"]

    def scan_history(self) -> list[dict[str, Any]]:
        return list(self._history)


class RecordedApi:
    """``wandb.Api()`` answering from a recording (by default ``wandb_runs.json``)."""

    def __init__(self, recorded: dict[str, Any] | None = None) -> None:
        self.recorded = recorded or json.loads(RECORDED.read_text())

    def runs(self, path: str) -> list[RecordedRun]:
        assert path == self.recorded["path"]
        return [RecordedRun(run) for run in self.recorded["runs"]]


def test_recorded_runs_become_records() -> None:
    records = {r.source.rsplit("/", 1)[1]: r for r in collect_wandb("alice/tunelab", api=RecordedApi())}
    assert len(records) == 8
    full = records["r001full"]
    assert full.source == "wandb:alice/tunelab/r001full" and full.status == COMPLETED
    assert full.config["tuning.name"] == "full" and full.config["optimizer.betas"] == (0.9, 0.999)
    assert full.config["job_type"] == "train" and not any(k.startswith(("_", "params/")) for k in full.config)
    assert full.metrics["test/accuracy"] == 0.8 and full.metrics["test/macro_f1"] == 0.79  # from final/*
    assert full.metrics["params/trainable_pct"] == 100.0 and full.metrics["val/macro_f1"] == 0.69
    assert full.history is not None and full.history()["step"].tolist()[:2] == [9, 9]
    assert (records["r063lora"].status, records["r063lora"].note) == (FAILED, "state crashed")
    assert (records["r074full"].status, records["r074full"].note) == (INCOMPLETE, "state running")


def test_finished_run_without_final_metrics_is_incomplete() -> None:
    api = RecordedApi()
    api.recorded["runs"][0]["summary"] = {"val/accuracy": 0.7}
    record = collect_wandb("alice/tunelab", api=api)[0]
    assert (record.status, record.note) == (INCOMPLETE, "state finished, no test metrics in the summary")


def test_same_tables_and_curves_as_the_run_folders(sweep: Path) -> None:
    folders, folder_problems = split_problems(collect([sweep]))
    runs, problems = split_problems(collect_wandb("alice/tunelab", api=RecordedApi()))
    assert sorted(p.kind for p in problems) == sorted(p.kind for p in folder_problems) == ["failed", "incomplete"]

    for rows, cols in [(ROWS, []), (["optimizer.lr"], ["tuning.name"]), (None, [])]:
        from_folders, from_wandb = build_table(folders, METRICS, rows, cols), build_table(runs, METRICS, rows, cols)
        pd.testing.assert_frame_equal(from_wandb.stats, from_folders.stats)
        assert markdown_table(from_wandb) == markdown_table(from_folders)
        assert latex_table(from_wandb) == latex_table(from_folders)
    pd.testing.assert_frame_equal(curves_data(runs, ROWS, "val/accuracy"), curves_data(folders, ROWS, "val/accuracy"))


def test_cli_from_wandb_writes_the_same_files(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(wandb_runs, "wandb_api", RecordedApi)
    args = ["--rows", *ROWS, "--metric", *METRICS]
    assert main(["--from-wandb", "alice/tunelab", *args, "--out", str(tmp_path / "wandb")]) == 0
    assert "excluded (failed): wandb:alice/tunelab/r063lora: state crashed" in capsys.readouterr().out
    assert main([str(sweep), *args, "--out", str(tmp_path / "folders")]) == 0
    for name in ("table.tex", "table.csv", "efficiency.csv", "curves.csv"):
        assert (tmp_path / "wandb" / name).read_text() == (tmp_path / "folders" / name).read_text(), name


def test_unreachable_server_is_a_clear_error() -> None:
    class Offline:
        def runs(self, path: str) -> list:
            raise ConnectionError("api.wandb.ai: Name or service not known")

    with pytest.raises(ResultsError, match=r"could not list the W&B runs of alice/tunelab: api\.wandb\.ai: Name or service"):
        collect_wandb("alice/tunelab", api=Offline())


# The README's ablation columns, plus the best checkpoint's validation and a second test set
ABLATION = ["test/accuracy", "test/macro_f1", "params/trainable_pct", "train/train_time_s", "train/peak_rss_mb",
            "val/macro_f1", "test_shifted/accuracy"]


def assert_wandb_matches_folders(recorded: dict[str, Any], tmp_path: Path) -> None:
    """Every number of each run's metrics.json comes back from its W&B run under the same key, and
    ``tunelab-results`` writes the same files from W&B as from the run folders."""
    root = record_wandb.write_folders(recorded, tmp_path / "runs")
    folders = {Path(r.source).name: r for r in collect([root])}
    runs = {r.source.rsplit("/", 1)[1]: r for r in collect_wandb(recorded["path"], api=RecordedApi(recorded))}
    assert set(runs) == set(folders)
    for run_id, folder in folders.items():
        assert runs[run_id].status == folder.status == COMPLETED
        assert {k: runs[run_id].metrics.get(k) for k in folder.metrics} == folder.metrics, run_id
        assert set(ABLATION) <= set(folder.metrics)

    args = ["--rows", "tuning.name", "--metric", *ABLATION]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wandb_runs, "wandb_api", lambda: RecordedApi(recorded))
        assert main(["--from-wandb", recorded["path"], *args, "--out", str(tmp_path / "wandb")]) == 0
    assert main([str(root), *args, "--out", str(tmp_path / "folders")]) == 0
    for name in ("table.tex", "table.csv", "efficiency.csv", "curves.csv"):
        assert (tmp_path / "wandb" / name).read_text() == (tmp_path / "folders" / name).read_text(), name


def test_recorded_offline_runs_give_the_run_folders_tables(tmp_path: Path) -> None:
    """On real offline W&B runs (recorded by ``record_wandb``): the full metrics.json comes back,
    extra test sets and train statistics included, where ``final/*`` gave only the test metrics."""
    recorded = json.loads(record_wandb.FIXTURE.read_text())
    assert len(recorded["runs"]) == len(record_wandb.RUNS)
    assert_wandb_matches_folders(recorded, tmp_path)


def test_offline_recording_end_to_end(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real tiny run with ``logger=wandb``: its offline W&B run's summary holds its metrics.json.
    ``TUNELAB_RECORD_WANDB=1`` records all of ``record_wandb.RUNS`` and rewrites the fixture."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rerecord = bool(os.environ.get("TUNELAB_RECORD_WANDB"))
    recorded = record_wandb.record(tiny_bert, tmp_path / "work", record_wandb.RUNS if rerecord else record_wandb.RUNS[:1])
    assert_wandb_matches_folders(recorded, tmp_path)
    if rerecord:
        record_wandb.FIXTURE.write_text(json.dumps(recorded, indent=1) + "\n", encoding="utf-8")
