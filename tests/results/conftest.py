"""A small sweep of synthetic run folders with hand-picked numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.results.runfolders import write_run

# test/accuracy by seed: full 0.80, 0.84, 0.88 (mean 0.84, sample std 0.04); lora 0.70, 0.74
# (mean 0.72, sample std 0.02 * sqrt(2)); full at lr 1e-4 is a group of its own.
FULL = {1: 0.80, 2: 0.84, 3: 0.88}
LORA = {1: 0.70, 2: 0.74}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """runs/: 3 seeds of full, 2 of lora, 1 of full at another lr, plus a crashed lora run and a
    full run still running (no metrics.json), in a Hydra multirun-like layout."""
    root = tmp_path / "runs"
    for seed, acc in FULL.items():
        write_run(root / "multirun", f"{seed}_full", seed=seed, test_accuracy=acc)
    for seed, acc in LORA.items():
        write_run(root / "multirun", f"{seed}_lora", seed=seed, tuning="lora", test_accuracy=acc)
    write_run(root, "full-lr", seed=1, lr=1e-4, test_accuracy=0.9)
    write_run(root / "multirun", "3_lora", seed=3, tuning="lora", status="failed", error="RuntimeError: out of memory",
              metrics=False)
    write_run(root / "multirun", "4_full", seed=4, status="running", metrics=False)
    return root
