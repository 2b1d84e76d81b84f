"""Synthetic run folders in the layout ``tunelab.train.run`` writes, with known numbers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

STEPS = (9, 19, 29)  # validation steps of a 3-epoch run; the best checkpoint is re-validated and tested at 30
TRAINABLE = {"full": 100.0, "lora": 0.5, "bitfit": 0.1}
PRESET_LR = {"full": 5e-5, "lora": 5e-4, "bitfit": 1e-3}  # tuning.lr; the runs here override optimizer.lr


def run_config(run_dir: Path, *, seed: int, tuning: str, task: str, lr: float) -> dict[str, Any]:
    """A resolved config with the keys that differ per run by nature (paths, checkpoint and log dirs)
    and keys that only some tuning methods have (``tuning.peft.*``)."""
    name = f"{task}-tiny-{tuning}"
    preset = {"_target_": f"tunelab.tuning.{tuning.title()}", "name": tuning, "lr": PRESET_LR[tuning]}
    if tuning == "lora":
        preset["peft"] = {"r": 8, "target_modules": None}
    return {
        "seed": seed,
        "run_name": name,
        "group": name,
        "tags": ["demo"],
        "progress": "none",
        "ckpt_path": None,
        "model": {"name": "tiny", "name_or_path": "/models/tiny", "config_overrides": {}},
        "task": {"name": task, "monitor": "val/macro_f1", "data": {"batch_size": 32}},
        "tuning": preset,
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": lr, "betas": [0.9, 0.999]},
        "callbacks": {"model_checkpoint": {"dirpath": f"{run_dir}/checkpoints", "monitor": "val/macro_f1"}},
        "logger": {"csv": {"save_dir": str(run_dir), "name": "logs"}},
        "paths": {"root_dir": str(run_dir.parent), "output_dir": str(run_dir)},
    }


def run_metrics(*, seed: int, tuning: str, task: str, test_accuracy: float, curve: Sequence[float]) -> dict[str, Any]:
    """metrics.json: test accuracy as given, macro F1 0.01 below it; val metrics from the curve's best."""
    best = max(curve)
    return {
        "run_name": f"{task}-tiny-{tuning}", "task": task, "model": "tiny", "tuning": tuning, "seed": seed,
        "best_checkpoint": "checkpoints/best.ckpt",
        "val": {"loss": round(1 - best, 6), "accuracy": best, "macro_f1": round(best - 0.02, 6), "f1_per_class/alpha": best},
        "test": {"loss": round(1 - test_accuracy, 6), "accuracy": test_accuracy, "macro_f1": round(test_accuracy - 0.01, 6),
                 "f1_per_class/alpha": test_accuracy},
        "params": {"trainable": int(TRAINABLE[tuning] * 1000), "total": 100_000, "trainable_pct": TRAINABLE[tuning]},
        "train": {"fit_time_s": 10.0, "train_time_s": 9.0, "train_samples": 300, "samples_per_s": 30.0 + seed,
                  "tokens_per_s": 900.0, "padding_efficiency": 0.8, "peak_rss_mb": 500.0 + seed, "epochs": 3, "steps": 30,
                  "eval_time_s": 1.0},
        "data": {"train": 100, "validation": 20, "test": 20},
        "device": "cpu",
    }


def history_rows(curve: Sequence[float], best: float, test_accuracy: float) -> list[dict[str, Any]]:
    """The rows Lightning logs: train losses, a validation per epoch, then the best checkpoint's
    re-validation and the test metrics at the final step."""
    rows: list[dict[str, Any]] = []
    for epoch, (step, value) in enumerate(zip(STEPS, curve, strict=True)):
        rows.append({"epoch": epoch, "step": step, "train/loss_step": 1.0 - value / 2})
        rows.append({"epoch": epoch, "step": step, "val/accuracy": value, "val/loss": 1 - value})
    rows.append({"epoch": len(curve), "step": STEPS[-1] + 1, "val/accuracy": best, "val/loss": 1 - best})
    rows.append({"epoch": len(curve), "step": STEPS[-1] + 1, "test/accuracy": test_accuracy})
    return rows


def write_run(
    root: Path,
    name: str,
    *,
    seed: int = 1,
    tuning: str = "full",
    task: str = "bbc-news",
    lr: float = 5e-5,
    test_accuracy: float = 0.8,
    curve: Sequence[float] | None = None,
    status: str = "completed",
    error: str | None = None,
    metrics: bool = True,
) -> Path:
    """A run folder below ``root``: config.yaml (and Hydra's unresolved .hydra/config.yaml),
    status.json, metrics.json (unless ``metrics=False``) and logs/metrics.csv."""
    run_dir = root / name
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\nrun_name: ${task.name}-${model.name}\n")
    cfg = run_config(run_dir, seed=seed, tuning=tuning, task=task, lr=lr)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run_dir / "status.json").write_text(json.dumps({"status": status, "updated": "2026-01-01T00:00:00+00:00",
                                                      **({"error": error} if error else {})}))
    curve = list(curve or (0.5, 0.6 + seed / 100, 0.7 + seed / 100))
    if metrics:
        values = run_metrics(seed=seed, tuning=tuning, task=task, test_accuracy=test_accuracy, curve=curve)
        (run_dir / "metrics.json").write_text(json.dumps(values))
    pd.DataFrame(history_rows(curve, max(curve), test_accuracy)).to_csv(run_dir / "logs" / "metrics.csv", index=False)
    return run_dir
