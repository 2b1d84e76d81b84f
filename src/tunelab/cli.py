"""Command-line entry points (Hydra mains)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from tunelab.config import CONFIG_DIR
from tunelab.errors import find_tunelab_error

log = logging.getLogger("tunelab")


def quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    for name in ("lightning.pytorch", "lightning.fabric"):  # Hydra's handlers already print these
        logging.getLogger(name).handlers.clear()
    if not sys.stdout.isatty():
        datasets.disable_progress_bars()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train(cfg: DictConfig) -> float | None:
    """``python train.py [group=option ...] [key=value ...]``; returns the monitored metric."""
    from tunelab.train import run

    quiet_libraries()
    try:
        metrics = run(cfg)
    except Exception as err:
        cause = find_tunelab_error(err)
        if cause is None:
            raise
        log.error("%s", cause)
        sys.exit(1)
    return metrics["val"].get(cfg.task.monitor.removeprefix("val/"))
