"""Hyperparameter search: hparams_search=lr-batch through Hydra's Optuna sweeper, locally; every trial is
an ordinary run folder, and Optuna's best parameters are written beside them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_optuna_trials_are_two_run_folders(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    overrides = [o for o in tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1")
                 if not o.startswith(("optimizer.lr=", "task.data.batch_size="))]  # searched
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=lr-batch",
                           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", *overrides, f"paths.root_dir={root}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    runs = sorted(p for p in (root / "csv-tiny-test-full").iterdir() if p.is_dir())
    assert len(runs) == 2, runs
    tried = set()
    for run in runs:
        assert json.loads((run / "status.json").read_text())["status"] == "completed"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["run_id"] == run.name and (run / "metrics.json").is_file()
        tried.add((config["optimizer"]["lr"], config["task"]["data"]["batch_size"], config["scheduler"]["warmup_ratio"]))
    assert len(tried) == 2  # two different points of the search space
    best = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "task.data.batch_size", "scheduler.warmup_ratio"}
    assert re.search(r"best_value", (root / "optimization_results.yaml").read_text())
