"""What ``python train.py`` prints: the lines a user needs, each once; ``train.log`` keeps the whole log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
# "[2026-12-01 19:41:17,202][tunelab.train][INFO] - " (Hydra's format) or "INFO: " (Lightning's own handler)
PREFIX = re.compile(r"^(\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - |[A-Z]+: )")
NOISE = re.compile(r"litlogger|matplotlib|fontManager|font cache|DeprecationWarning|FutureWarning|deprecated|it/s\]",
                   flags=re.IGNORECASE)


def test_console_shows_each_line_once_without_noise_and_train_log_keeps_all(tiny_bert: Path, learnable_csv: Path,
                                                                           tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MPLCONFIGDIR": str(tmp_path / "matplotlib")}  # no font cache yet: matplotlib builds one, as on a new machine
    overrides = tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                               "trainer.limit_val_batches=2", "trainer.limit_test_batches=2")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    console = [PREFIX.sub("", line).rstrip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    repeated = {line: n for line, n in Counter(console).items() if n > 1}
    assert not repeated, repeated
    assert not [line for line in console if NOISE.search(line)]
    for needed in ("parameters: ", "test: loss", "run folder: "):
        assert any(line.startswith(needed) for line in console), needed

    log = (run_dir / "train.log").read_text()
    for line in ("parameters: ", "GPU available: ", "`Trainer.fit` stopped", "those of fit's last validation",
                 "test: loss", "run folder: "):
        assert line in log, line
    # one epoch: the best checkpoint holds the final weights, whose validation in fit is reported and which the
    # test scores as they are in memory, so nothing restores it
    assert "Restoring states from the checkpoint" not in log
