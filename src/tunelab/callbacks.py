"""Lightning callbacks and plugins that tunelab adds to every run."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tunelab.batch import token_counts
from tunelab.requeue import per_rank
from tunelab.trusted import load_checkpoint

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it: a crash never leaves half a file.
    Reads one as data only: ``torch.load(weights_only=True)``, whatever Lightning asks for."""

    def load_checkpoint(self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint's tensors and plain data; one holding other pickled objects (which would run code
        when unpickled) is refused with a TunelabError naming the file. Lightning passes ``weights_only=None``,
        which means unpickling anything on torch < 2.6: tensors only, here, whatever it passes."""
        if "://" in str(path):  # remote filesystems: Lightning's own reader
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint(path, map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        if "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk: leave no half-written file behind
            raise


def _rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak resident memory of this process while running (sampled every ``interval`` s, so
    several runs in one process, as in a Hydra multirun, each get their own peak), and peak
    allocated GPU memory."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_rss = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while True:
            rss = _rss_mb()
            if rss is not None:
                self.peak_rss = max(self.peak_rss, rss)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def summary(self) -> dict[str, float]:
        peak = {"peak_rss_mb": self.peak_rss or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if torch.cuda.is_available():
            peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return peak


COUNTERS = ("train_samples", "real_tokens", "fed_tokens", "train_time_s", "fit_time_s")


class TrainStats(L.Callback):
    """Training throughput: time spent in training steps (validation excluded), samples, tokens,
    and peak memory during fit.

    The counters travel in every checkpoint, per rank, so a run resumed after a requeue or a crash
    reports the whole run (the samples its weights were trained on, and the time they took) and,
    under ``attempts``, what each attempt up to the checkpoint it was resumed from added.
    ``padding_efficiency`` is real tokens / tokens fed (attention-mask ones / its size).
    """

    def __init__(self) -> None:
        self.earlier: list[dict[str, float]] = []  # the attempts before this one, as the checkpoint recorded them
        self._rank, self._world = 0, 1
        self._stage: str | None = None
        self.reset()

    def reset(self) -> None:
        self.samples = self.real_tokens = self.fed_tokens = 0
        self.train_seconds = 0.0
        self.fit_seconds = 0.0
        self._t: float | None = None
        self._fit_start: float | None = None
        self.memory = PeakMemory()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank, self._world, self._stage = trainer.global_rank, trainer.world_size, stage

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()
        self.memory.start()
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - (self._fit_start or time.perf_counter())
        self._fit_start = None
        self.memory.stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.memory.stop()

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
        samples, real, fed = token_counts(batch)
        self.samples += samples
        self.real_tokens += real
        self.fed_tokens += fed

    def current(self) -> dict[str, float]:
        """This attempt's counters so far."""
        running = time.perf_counter() - self._t if self._t is not None else 0.0
        fit = self.fit_seconds or (time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0)
        return {"train_samples": self.samples, "real_tokens": self.real_tokens, "fed_tokens": self.fed_tokens,
                "train_time_s": round(self.train_seconds + running, 2), "fit_time_s": round(fit, 2)}

    # --- carried in checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"attempts_per_rank": per_rank([*self.earlier, self.current()], self._world)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage != "fit":
            return  # validate/test(ckpt_path=...) restore callbacks too: they continue no training
        per_rank = state_dict.get("attempts_per_rank") or []
        if len(per_rank) != self._world:
            log.warning("checkpoint has training counters of %d rank(s), this run has %d: counting from zero",
                        len(per_rank), self._world)
            return
        self.earlier = [dict(a) for a in per_rank[self._rank]]

    # --- the figures in metrics.json ----------------------------------------------------------------
    @property
    def total_samples(self) -> int:
        """Training samples of the whole run on this rank (all attempts)."""
        return int(sum(a["train_samples"] for a in self.earlier) + self.samples)

    def summary(self) -> dict[str, Any]:
        attempts = [*self.earlier, self.current()]
        total = {key: sum(a[key] for a in attempts) for key in COUNTERS}
        seconds = max(total["train_time_s"], 1e-9)
        return {
            "fit_time_s": round(total["fit_time_s"], 2),
            "train_time_s": round(total["train_time_s"], 2),
            "train_samples": int(total["train_samples"]),
            "samples_per_s": round(total["train_samples"] / seconds, 2),
            "tokens_per_s": round(total["real_tokens"] / seconds, 1),
            "padding_efficiency": round(total["real_tokens"] / max(total["fed_tokens"], 1), 4),
            **{k: round(v, 1) for k, v in self.memory.summary().items()},
            "attempts": [{k: a[k] for k in ("train_samples", "train_time_s", "fit_time_s")} for a in attempts],
        }


class EvalStats(L.Callback):
    """Evaluation throughput per stage (``val``: every validation, in fit and after; ``test``: all test sets):
    examples scored per second of the evaluation loops, on this rank; the sanity check is left out."""

    def __init__(self) -> None:
        self.samples: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._t: float | None = None

    def _start(self, trainer: L.Trainer) -> None:
        self._t = None if trainer.sanity_checking else time.perf_counter()

    def _count(self, stage: str, batch: Any) -> None:
        if self._t is not None:
            self.samples[stage] = self.samples.get(stage, 0) + token_counts(batch)[0]

    def _end(self, stage: str) -> None:
        if self._t is not None:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - self._t
            self._t = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count("val", batch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end("val")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count("test", batch)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end("test")

    def summary(self) -> dict[str, float]:
        """``<stage>_samples``, ``<stage>_time_s`` and ``<stage>_samples_per_s`` for the stages that ran."""
        out: dict[str, float] = {}
        for stage, samples in self.samples.items():
            seconds = max(self.seconds.get(stage, 0.0), 1e-9)
            out |= {f"{stage}_samples": samples, f"{stage}_time_s": round(seconds, 2),
                    f"{stage}_samples_per_s": round(samples / seconds, 2)}
        return out


class PlainProgress(L.Callback):
    """One log line every ``every_n_steps`` steps and after each validation: for CI logs and Slurm
    output files, where a live progress bar turns into thousands of carriage returns."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._t = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._samples += token_counts(batch)[0]
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
