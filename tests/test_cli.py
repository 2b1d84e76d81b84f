"""The command line as a user meets it: --help, --cfg job, a run through Hydra, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import make_rows, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_help_lists_config_groups() -> None:
    out = train("--help").stdout
    # A stable subset: other model/task configs come and go, the listing's shape and these stay.
    models = re.search(r"^model: (.+)$", out, flags=re.MULTILINE)
    assert models, out
    assert {"bert", "distilbert", "minilm", "roberta", "tiny"} <= set(models.group(1).split(", "))
    for group in ("hparams_search", "task", "trainer", "tuning"):
        assert re.search(rf"^{group}: ", out, flags=re.MULTILINE), group
    assert {"ddp", "fsdp"} <= set(re.search(r"^trainer: (.+)$", out, flags=re.MULTILINE).group(1).split(", "))
    assert "optimizer: adam, adamw, paged-adamw, rmsprop, sgd" in out and "python train.py --cfg job" in out


def test_cfg_job_prints_the_composed_config() -> None:
    out = train("--cfg", "job", "model=roberta", "optimizer=sgd", "trainer.max_epochs=7").stdout
    cfg = yaml.safe_load(out)
    assert cfg["model"]["name_or_path"] == "roberta-base"
    assert cfg["optimizer"]["_target_"] == "torch.optim.SGD" and cfg["trainer"]["max_epochs"] == 7


def test_hydra_run_writes_folder_and_bad_labels_fail_cleanly(tiny_bert: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    make_rows(90).to_csv(data, index=False)
    run_dir = tmp_path / "run"
    proc = train(*tiny_overrides(tiny_bert, data, "trainer.max_epochs=1"), f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / "train.log").read_text().count("test: loss") == 1
    assert not (run_dir / ".hydra").exists()  # tunelab's config.yaml is the record: no Hydra files in the folder

    bad = make_rows(90)
    bad.loc[7, "label"] = "omega"
    bad.to_csv(data, index=False)
    proc = train(*tiny_overrides(tiny_bert, data, "task.data.labels=[alpha,beta,gamma]"), f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode == 1
    assert "labels outside the declared set" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "bad" / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_failed_job_of_a_multirun_does_not_stop_the_others(tiny_bert: Path, tmp_path: Path) -> None:
    """A bad value in one sweep job is that job's error; the sweep runs the rest (an exit would end it)."""
    data = tmp_path / "train.csv"
    make_rows(90).to_csv(data, index=False)
    proc = train("-m", *tiny_overrides(tiny_bert, data, "trainer.max_epochs=1", "logger=none"),
                 "task.data.batch_size=0,16", f"paths.root_dir={tmp_path / 'runs'}")
    assert proc.returncode != 0  # the sweep reports that a job failed
    assert "task.data.batch_size must be" in proc.stdout + proc.stderr
    completed = [json.loads(p.read_text())["status"] for p in (tmp_path / "runs").rglob("status.json")]
    assert completed == ["completed"]
