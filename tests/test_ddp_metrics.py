"""Distributed-correct metrics: under 2-rank CPU DDP (gloo, no Slurm), the synced test metrics of a run equal
a single-process evaluation of the same checkpoint (the eval sampler splits examples without repeating any)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tunelab.models import load_tokenizer
from tunelab.train import build_datamodule, build_module, build_trainer

ROOT = Path(__file__).resolve().parents[1]


def test_two_rank_ddp_test_metrics_equal_single_process(tiny_bert: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    make_rows(313, seed=3).to_csv(data, index=False)  # odd split sizes: a padding sampler would repeat examples
    overrides = tiny_overrides(tiny_bert, data, "trainer.max_epochs=1", "progress=plain")
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29533"}
    for key in [k for k in env if k.startswith("SLURM_")]:
        env.pop(key)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, "trainer=ddp", "trainer.devices=2",
                           "trainer.num_nodes=1", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == 2 and len(metrics["distributed"]["ranks"]) == 2
    assert metrics["data"]["test"] % 2 == 1  # 31: ranks hold 16 and 15 examples

    cfg = compose_train(tmp_path / "single", *overrides)
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg, [])
    single = trainer.test(module, datamodule=datamodule, ckpt_path=metrics["best_checkpoint"], verbose=False)[0]
    single = {k.removeprefix("test/"): v for k, v in single.items()}
    assert single.keys() == metrics["test"].keys()
    assert metrics["test"] == pytest.approx(single, rel=1e-5, abs=1e-6)


def test_ddp_with_one_process_batches_as_a_single_process_run(tiny_bert: Path, tmp_path: Path) -> None:
    """trainer=ddp with one process (the sbatch template's 1x1 default) keeps tunelab's length-grouped
    batches (Lightning would swap in its shuffling sampler): the same padding, updates and metrics as the
    default trainer."""
    from tunelab.train import run

    data = tmp_path / "train.csv"
    make_rows(313, seed=3).to_csv(data, index=False)
    # Dropout off: Lightning's DDP re-seeds the random streams at set-up, so masks differ from a single process.
    overrides = tiny_overrides(tiny_bert, data, "trainer.max_epochs=2", "logger=none",
                               "+model.config_overrides.hidden_dropout_prob=0", "+model.config_overrides.attention_probs_dropout_prob=0")
    run_dir = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29534")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, "trainer=ddp", "trainer.devices=1",
                           "trainer.num_nodes=1", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ddp = json.loads((run_dir / "metrics.json").read_text())
    single = run(compose_train(tmp_path / "single", *overrides))
    assert ddp["distributed"]["strategy"] == "DDPStrategy" and ddp["distributed"]["world_size"] == 1
    assert ddp["train"]["padding_efficiency"] == single["train"]["padding_efficiency"]
    assert ddp["val"] == pytest.approx(single["val"], rel=1e-5) and ddp["test"] == pytest.approx(single["test"], rel=1e-5)
