"""Run folders -> records: discovery, flat config and metrics, statuses, malformed files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.results.runfolders import write_run
from tunelab.results.aggregate import Problem, split_problems
from tunelab.results.collect import collect, find_run_folders, load_run_folder
from tunelab.results.records import COMPLETED, FAILED, INCOMPLETE, PRUNED, UNREADABLE, ResultsError


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


def test_a_pruned_search_trial_is_set_aside_as_pruned_with_its_reason(tmp_path: Path) -> None:
    run = write_run(tmp_path, "run", status="pruned", metrics=True)  # a pruned run's metrics.json has no test split
    (run / "status.json").write_text(json.dumps({"status": "pruned", "reason": "pruned by MedianPruner at validation 2"}))
    record = load_run_folder(run)
    assert (record.status, record.note) == (PRUNED, "pruned by MedianPruner at validation 2")
    assert split_problems([record]) == ([], [Problem(PRUNED, str(run), "pruned by MedianPruner at validation 2")])


def test_malformed_metrics_json_names_the_file_and_the_error(tmp_path: Path) -> None:
    run = write_run(tmp_path, "run")
    (run / "metrics.json").write_text('{"test": {"accuracy": 0.9,}}')
    with pytest.raises(ResultsError, match=r"/run/metrics\.json is malformed JSON: Expecting property name .*line 1 column 27"):
        load_run_folder(run)


@pytest.mark.parametrize(("file", "content", "why"), [
    ("metrics.json", '{"test": {"accuracy": 0.9,}}', "is malformed JSON: Expecting property name"),
    ("metrics.json", "[0.9]", "does not hold a JSON object"),
    ("status.json", "", "is malformed JSON: Expecting value"),
    ("config.yaml", "a: [", "is malformed YAML"),
])
def test_an_unreadable_run_is_listed_with_the_reason_and_the_others_collected(sweep: Path, file: str, content: str,
                                                                              why: str) -> None:
    """One malformed file used to abort the whole collection; now that run is 'unreadable' (or, strict, an error)."""
    bad = sweep / "multirun" / "2_lora"
    (bad / file).write_text(content)
    records = {Path(r.source).name: r for r in collect([sweep])}
    assert len(records) == 8 and records["1_full"].status == COMPLETED
    assert records["2_lora"].status == UNREADABLE and records["2_lora"].note.startswith(f"{bad / file} {why}")
    assert records["2_lora"].config.get("tuning.name") == (None if file == "config.yaml" else "lora")  # for --where
    with pytest.raises(ResultsError, match=rf"^{bad / file} {why}"):
        collect([sweep], strict=True)


def test_a_file_without_read_permission_is_named(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PermissionError used to end tunelab-results with a traceback; chmod does not stop root, so the
    denial is simulated."""
    denied = sweep / "multirun" / "1_lora" / "metrics.json"
    read_text = Path.read_text

    def guarded(path: Path, *args, **kwargs) -> str:
        if path == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)
    records = {Path(r.source).name: r for r in collect([sweep])}
    assert records["1_lora"].status == UNREADABLE and records["1_lora"].note == f"cannot read {denied}: Permission denied"
    with pytest.raises(ResultsError, match=rf"^cannot read {denied}: Permission denied$"):
        collect([sweep], strict=True)


def test_a_directory_that_cannot_be_listed_is_named(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = sweep / "multirun"
    scandir = os.scandir

    def guarded(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    records = collect([sweep])
    assert [(r.source, r.status, r.note) for r in records] == [
        (str(sweep / "full-lr"), COMPLETED, ""), (str(locked), UNREADABLE, "cannot list the directory: Permission denied")]
    with pytest.raises(ResultsError, match=rf"^cannot list {locked}: Permission denied$"):
        collect([sweep], strict=True)


def test_directories_without_run_folders_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ResultsError, match=f"no run folders under {tmp_path / 'empty'}"):
        collect([tmp_path / "empty"])
    with pytest.raises(ResultsError, match="missing is not a directory"):
        collect([tmp_path / "missing"])


def test_a_running_status_without_a_live_process_says_so(tmp_path: Path) -> None:
    """A run killed without a word (kill -9, out of disk) keeps status running: its lock tells it is gone."""
    import subprocess
    import sys

    from tunelab.run_folder import RunFolder

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 1\n")
    RunFolder(run).set_status("running")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tunelab.run_folder import RunFolder\n"
                               "with RunFolder(sys.argv[1]).lock():\n    print('locked', flush=True); time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert load_run_folder(run).note == "status running, no metrics.json"  # alive: in progress
    finally:
        holder.kill()
        holder.wait()
    record = load_run_folder(run)
    assert record.status == INCOMPLETE and "no live process holds the run" in record.note
