"""One clock for every runner of ``bench/throughput.py``: optimizer steps, samples and tokens, and useful FLOPs.

A forward pre-hook on the model counts what each training forward pass is fed (examples, real tokens, tokens
with padding, and the squared lengths that attention costs), so tunelab, the Hugging Face Trainer and the
plain loop are measured by the same code, whatever their loops do. The clock starts when the last warm-up step
ends and stops when the last step ends: data loading, logging and everything else between steps counts.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch import nn
from transformers import TrainerCallback

from tunelab.batch import token_counts
from tunelab.tuning.parts import find_blocks


def training_flops(model: nn.Module, real_tokens: int, squared_lengths: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) that the real tokens need, from the model's shapes: every
    linear layer inside the transformer blocks once per token (2 x in x out), and attention's two products
    (scores and weighted values, 2 x 2 x n x d per token for a sequence of n) in every block. Embedding lookups,
    the pooler and a sequence head are left out; padding is not useful work."""
    blocks = [block for _, block in find_blocks(model)]
    per_token = sum(2 * m.in_features * m.out_features for b in blocks for m in b.modules() if isinstance(m, nn.Linear))
    config = model.config
    heads = config.num_attention_heads
    attention_width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
    attention = 4 * attention_width * len(blocks) * squared_lengths
    return 3.0 * (per_token * real_tokens + attention)


class StepMeter:
    """Counts training forwards through ``attach(model)``; the runner calls ``step_end()`` after each optimizer step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.steps = 0
        self.samples = self.real = self.fed = self.squared = 0
        self.started = self.last = 0.0
        self.model: nn.Module | None = None
        self.eval_samples = 0
        self.eval_seconds = 0.0

    def attach(self, model: nn.Module) -> None:
        self.model = model
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        samples, real, fed = token_counts(kwargs)
        mask = kwargs.get("attention_mask")
        lengths = mask.sum(-1) if mask is not None else torch.tensor([real])  # a packed row: approximate
        self.samples += samples
        self.real += real
        self.fed += fed
        self.squared += int((lengths.long() ** 2).sum())

    def step_end(self) -> None:
        self.steps += 1
        self.last = time.perf_counter()
        if self.steps == self.warmup:  # what the warm-up steps fed is not timed
            self.started = self.last
            self.samples = self.real = self.fed = self.squared = 0

    def timed_eval(self, samples: int, seconds: float) -> None:
        self.eval_samples += samples
        self.eval_seconds += seconds

    def result(self) -> dict[str, float]:
        seconds = self.last - self.started
        if self.steps <= self.warmup or seconds <= 0:
            raise RuntimeError(f"{self.steps} steps: none timed after {self.warmup} warm-up steps")
        flops = training_flops(self.model, self.real, self.squared) if self.model is not None else float("nan")
        return {
            "timed_steps": self.steps - self.warmup,
            "samples_per_s": self.samples / seconds,
            "tokens_per_s": self.real / seconds,
            "padding_efficiency": self.real / self.fed,
            "train_flop_per_s": flops / seconds,
            "eval_samples_per_s": self.eval_samples / self.eval_seconds if self.eval_seconds else float("nan"),
        }


class LightningMeter(L.Callback):
    """``+callbacks.bench_meter._target_=step_meter.LightningMeter``: the meter inside ``tunelab.train.run``."""

    current: StepMeter | None = None  # set by the runner before run() instantiates this callback

    def __init__(self) -> None:
        self.meter = LightningMeter.current

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.meter.attach(pl_module.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.meter.step_end()


class HFMeter(TrainerCallback):
    """The meter inside the Hugging Face Trainer: a step ends where the Trainer's does (after the optimizer)."""

    def __init__(self, meter: StepMeter):
        self.meter = meter

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        self.meter.attach(model)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.meter.step_end()
