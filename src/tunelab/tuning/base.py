"""The interface every tuning strategy implements."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TuningStrategy:
    """Decides which parameters of a task model train, and how the result is saved and reloaded.

    A new method subclasses this in its own file and overrides what it changes:

    - ``load_kwargs()``: extra ``from_pretrained`` arguments for loading the backbone (tuning=qlora: 4-bit).
    - ``apply(model)``: receives the full task model (backbone + head), returns the model to train.
    - ``loss(outputs, batch, task_loss)``: an extra training objective (distillation does this).
    - ``modules()``: extra modules the task module must hold (moved to the device with it).
    - ``optimizer(cfg, model, ...)``: the optimizer over the trainable parameters (LoRA+: its own groups).
    - ``on_optimizer_step(model, trainer)``: after every optimizer step, gradients still there (AdaLoRA's rank allocation).
    - ``save`` / ``load_pretrained``: the export format and how to load it back.
    """

    name: str = "base"

    def __init__(self, name: str | None = None, lr: float | None = None, l2sp: float | None = None,
                 unfreeze: int | str | None = None):
        """``lr`` is the preset's learning rate, read by the optimizer config (``${tuning.lr}``); ``l2sp`` and
        ``unfreeze`` are recipes that combine with any method (``tunelab.tuning.recipes``)."""
        from tunelab.tuning.recipes import check_recipes

        check_recipes(l2sp, unfreeze)
        self.name = name or type(self).name
        self.lr = lr
        self.l2sp, self.unfreeze = l2sp, unfreeze

    def load_kwargs(self) -> dict[str, Any]:
        return {}

    def apply(self, model: PreTrainedModel) -> nn.Module:
        return model

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor], task_loss: torch.Tensor) -> torch.Tensor:
        return task_loss

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizer(self, cfg: Mapping[str, Any], model: nn.Module,
                  clipping_under_mixed_precision: bool = False) -> torch.optim.Optimizer:
        """The run's optimizer (``cfg`` is ``optimizer``) over ``model``'s trainable parameters."""
        from tunelab.optim import build_optimizer

        return build_optimizer(cfg, model, clipping_under_mixed_precision)

    def on_optimizer_step(self, model: nn.Module, trainer: Any) -> None:
        """Called after each optimizer step, before the gradients are zeroed; ``trainer.global_step`` counts the
        steps completed before this one."""

    def save(self, model: nn.Module, path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        """Save in Hugging Face format: ``AutoModelFor*.from_pretrained(path)`` and pipelines load it."""
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    def load_pretrained(self, auto_class: type, model_cfg: Mapping[str, Any], path: Path, **config_kwargs: Any) -> nn.Module:
        """Load what ``save`` wrote (``model_cfg`` names the base model, for strategies that need it)."""
        from tunelab.models import remote_code

        return auto_class.from_pretrained(path, trust_remote_code=remote_code(model_cfg))
