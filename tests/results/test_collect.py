"""Run folders -> records: discovery, flat config and metrics, statuses, malformed files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.results.runfolders import write_run
from tunelab.results.collect import collect, find_run_folders, load_run_folder
from tunelab.results.records import COMPLETED, FAILED, INCOMPLETE, ResultsError


def test_finds_run_folders_but_not_the_config_files_inside_them(sweep: Path) -> None:
    nested = sweep / "multirun" / "1_full" / "wandb" / "run-1" / "files"
    nested.mkdir(parents=True)
    (nested / "config.yaml").write_text("wandb_version: 1\n")
    (sweep / ".trash" / "old").mkdir(parents=True)
    (sweep / ".trash" / "old" / "config.yaml").write_text("seed: 1\n")

    names = [p.relative_to(sweep).as_posix() for p in find_run_folders(sweep)]
    assert names == ["full-lr", *(f"multirun/{n}" for n in ["1_full", "1_lora", "2_full", "2_lora", "3_full", "3_lora", "4_full"])]
    assert find_run_folders(sweep / "full-lr") == [sweep / "full-lr"]  # a run folder itself


def test_overlapping_roots_give_each_run_folder_once(sweep: Path) -> None:
    assert len(collect([sweep, sweep / "multirun", sweep / "full-lr"])) == 8


def test_record_holds_flat_config_metrics_status_and_history(sweep: Path) -> None:
    records = {Path(r.source).name: r for r in collect([sweep])}
    full = records["1_full"]
    assert full.status == COMPLETED and full.note == ""
    assert full.config["optimizer.lr"] == 5e-5 and full.config["tuning.name"] == "full"
    assert full.config["optimizer.betas"] == (0.9, 0.999) and full.config["tags"] == ("demo",)
    assert full.metrics["test/accuracy"] == 0.8 and full.metrics["val/macro_f1"] == pytest.approx(0.69)
    assert full.metrics["params/trainable_pct"] == 100.0 and full.metrics["train/samples_per_s"] == 31.0
    assert full.metrics["train/peak_rss_mb"] == 501.0 and "test/f1_per_class/alpha" in full.metrics
    assert full.history is not None
    assert full.history()["val/accuracy"].dropna().tolist() == pytest.approx([0.5, 0.61, 0.71, 0.71])

    assert records["3_lora"].status == FAILED and records["3_lora"].note == "RuntimeError: out of memory"
    assert records["4_full"].status == INCOMPLETE and records["4_full"].note == "status running, no metrics.json"


@pytest.mark.parametrize(
    ("status", "metrics", "expected"),
    [("running", True, INCOMPLETE), ("completed", False, INCOMPLETE), (None, True, COMPLETED), (None, False, INCOMPLETE)],
)
def test_status_follows_status_json_and_metrics_json(tmp_path: Path, status: str | None, metrics: bool, expected: str) -> None:
    run = write_run(tmp_path, "run", status=status or "running", metrics=metrics)
    if status is None:
        (run / "status.json").unlink()
    assert load_run_folder(run).status == expected


def test_malformed_metrics_json_names_the_file_and_the_error(tmp_path: Path) -> None:
    run = write_run(tmp_path, "run")
    (run / "metrics.json").write_text('{"test": {"accuracy": 0.9,}}')
    with pytest.raises(ResultsError, match=r"/run/metrics\.json is malformed JSON: Expecting property name .*line 1 column 27"):
        load_run_folder(run)


def test_directories_without_run_folders_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ResultsError, match=f"no run folders under {tmp_path / 'empty'}"):
        collect([tmp_path / "empty"])
    with pytest.raises(ResultsError, match="missing is not a directory"):
        collect([tmp_path / "missing"])
