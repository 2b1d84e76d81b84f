"""Record real offline W&B runs of tiny tunelab runs, as ``wandb.Api().runs(...)`` would return them.

    TUNELAB_RECORD_WANDB=1 pytest tests/results/test_wandb_runs.py -k end_to_end   # rewrites wandb_offline_runs.json

Each run goes through ``tunelab.train.run`` with ``logger=wandb`` and ``WANDB_MODE=offline``. Its
``run-<id>.wandb`` file, the transaction log that ``wandb sync`` uploads, is read back record by record
(the installed wandb has no reader of its own: the format is LevelDB's log format holding
``wandb.proto.wandb_internal_pb2.Record`` messages) and replayed into the public API's view of the
run: config, summary, history rows, state, group, job type and tags, the layout of ``wandb_runs.json``.
The files of each run folder that ``tunelab-results`` reads are recorded beside, so that a test can
build the tables from both and compare them.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import CLASSES, make_rows
from tests.helpers import compose_train

FIXTURE = Path(__file__).with_name("wandb_offline_runs.json")
PROJECT = "tunelab-tests/offline"
# (tuning, seed): two seeds of one method (a mean ± std cell) and another method; each has an extra test set
RUNS = (("full", 1), ("full", 2), ("bitfit", 1))
FOLDER_FILES = ("config.yaml", "status.json", "metrics.json", "logs/metrics.csv")

_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version 0
_RECORD = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)
_BLOCK = 32768


def read_records(path: Path) -> Iterator[Any]:
    """The ``Record`` messages of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = _HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path} is not a W&B transaction log (header {ident!r} {magic:#x} {version})")
    pos, pending = _HEADER.size, b""
    while pos + _RECORD.size <= len(data):
        if _BLOCK - pos % _BLOCK < _RECORD.size:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _RECORD.unpack_from(data, pos)
        if (crc, length, kind) == (0, 0, 0):  # zero padding up to the next block
            pos += _BLOCK - pos % _BLOCK
            continue
        chunk = data[pos + _RECORD.size:pos + _RECORD.size + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos += _RECORD.size + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _set(target: dict[str, Any], item: Any) -> None:
    """Apply one ``key``/``nested_key`` + ``value_json`` item to ``target``."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def _remove(target: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.get(key, {})
    target.pop(keys[-1], None)


def api_run(wandb_file: Path) -> dict[str, Any]:
    """One ``.wandb`` file replayed into the attributes of ``wandb.apis.public.Run`` the adapter reads."""
    run: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "state": "crashed"}  # no exit record
    for record in read_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.update(id=info.run_id, name=info.display_name, group=info.run_group, job_type=info.job_type,
                       tags=list(info.tags))
            for item in info.config.update:
                _set(run["config"], item)
        elif kind == "config":
            for item in record.config.update:
                _set(run["config"], item)
            for item in record.config.remove:
                _remove(run["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run["summary"], item)
            for item in record.summary.remove:
                _remove(run["summary"], item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            run["history"].append(row)
        elif kind == "exit":
            run["state"] = "finished" if record.exit.exit_code == 0 else "failed"
    return run


def folder_files(run_dir: Path) -> dict[str, Any]:
    """The files of a run folder that ``tunelab.results.collect`` reads (JSON files parsed)."""
    out: dict[str, Any] = {}
    for name in FOLDER_FILES:
        text = (run_dir / name).read_text(encoding="utf-8")
        out[name] = json.loads(text) if name.endswith(".json") else text
    return out


def write_folders(recorded: dict[str, Any], root: Path) -> Path:
    """The recorded run folders under ``root`` (one per W&B run, named by its id)."""
    for run_id, files in recorded["folders"].items():
        for name, content in files.items():
            path = root / run_id / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content) if name.endswith(".json") else content, encoding="utf-8")
    return root


def record(tiny_bert: Path, work: Path, runs: tuple[tuple[str, int], ...] = RUNS) -> dict[str, Any]:
    """Train ``runs`` (tuning, seed) with ``logger=wandb`` under ``work`` (``WANDB_MODE=offline`` set by
    the caller); their W&B runs and run folders, in the fixture's layout."""
    from tests.conftest import tiny_overrides
    from tunelab.train import run

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    make_rows(300, seed=0).to_csv(data / "train.csv", index=False)
    make_rows(60, seed=1).to_csv(data / "test.csv", index=False)
    make_rows(60, seed=2).to_csv(data / "shifted.csv", index=False)  # a second test set: test_shifted/*
    recorded_runs, folders = [], {}
    for tuning, seed in runs:
        out = work / "runs" / f"{tuning}-{seed}"
        run(compose_train(out, *tiny_overrides(
            tiny_bert, data / "train.csv", f"tuning={tuning}", f"seed={seed}", "logger=[csv,wandb]", "tags=[recorded]",
            f"task.data.labels=[{','.join(CLASSES)}]", f"task.data.source.data_files.test={data / 'test.csv'}",
            f"+task.data.source.data_files.test_shifted={data / 'shifted.csv'}",
            "task.data.splits={train:train,test:test,test_shifted:test_shifted}",
            "trainer.max_epochs=3",
        )))
        (wandb_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
        recorded = api_run(wandb_file)
        recorded_runs.append(recorded)
        folders[recorded["id"]] = folder_files(out)
    return {
        "_comment": "Recorded by tests/results/record_wandb.py (python -m tests.results.record_wandb) from real "
                    "offline W&B runs of tiny tunelab runs: the public-API view of each run and its run folder's files.",
        "path": PROJECT,
        "runs": recorded_runs,
        "folders": folders,
    }
