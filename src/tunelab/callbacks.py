"""Lightning callbacks and plugins that tunelab adds to every run."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        if "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and, on GPU, peak allocated device memory."""
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


class TrainStats(L.Callback):
    """Training throughput: time spent in training steps (validation excluded), samples, tokens.

    ``padding_efficiency`` is real tokens / tokens fed (attention-mask ones / its size).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.samples = self.real_tokens = self.fed_tokens = 0
        self.train_seconds = 0.0
        self.fit_seconds = 0.0
        self._t: float | None = None
        self._fit_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()

    def _pause(self) -> None:
        if self._t is not None:
            self.train_seconds += time.perf_counter() - self._t
            self._t = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training:
            self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        mask = batch["attention_mask"]
        self.samples += mask.shape[0]
        self.real_tokens += int(mask.sum())
        self.fed_tokens += mask.numel()

    def summary(self) -> dict[str, float]:
        seconds = max(self.train_seconds, 1e-9)
        return {
            "fit_time_s": round(self.fit_seconds, 2),
            "train_time_s": round(self.train_seconds, 2),
            "train_samples": self.samples,
            "samples_per_s": round(self.samples / seconds, 2),
            "tokens_per_s": round(self.real_tokens / seconds, 1),
            "padding_efficiency": round(self.real_tokens / max(self.fed_tokens, 1), 4),
            **{k: round(v, 1) for k, v in peak_memory_mb().items()},
        }


class PlainProgress(L.Callback):
    """One log line every ``every_n_steps`` steps and after each validation: for CI logs and Slurm
    output files, where a live progress bar turns into thousands of carriage returns."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._t = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._samples += len(batch["input_ids"])
        step = trainer.global_step
        if step % self.every_n_steps and batch_idx + 1 != trainer.num_training_batches:
            return
        if not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self._t
        loss = trainer.callback_metrics.get("train/loss_step")
        total = trainer.estimated_stepping_batches
        log.info(
            "epoch %d  step %d/%d  loss %s  %.1f samples/s",
            trainer.current_epoch, step, total, f"{loss:.4f}" if loss is not None else "-", self._samples / max(elapsed, 1e-9),
        )
        self._t, self._samples = time.perf_counter(), 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.training or not trainer.is_global_zero:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/") and "/" not in k[4:]}
        log.info("validation  epoch %d  %s", trainer.current_epoch, "  ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items())))
        self._t = time.perf_counter()


def progress_callbacks(mode: str, every_n_steps: int = 50) -> tuple[list[L.Callback], bool]:
    """``auto``: a rich bar on an interactive terminal, plain log lines otherwise."""
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "plain"
    if mode == "rich":
        from lightning.pytorch.callbacks import RichProgressBar

        return [RichProgressBar()], True
    if mode == "tqdm":
        return [], True
    if mode == "plain":
        return [PlainProgress(every_n_steps)], False
    if mode == "none":
        return [], False
    raise ValueError(f"progress must be auto, rich, tqdm, plain or none, got {mode!r}")
