"""Fine-tuning recipes that combine with any tuning method: L2-SP and gradual unfreezing.

Both are keys of ``tuning`` (``configs/train.yaml`` turns them off; any preset or override sets them) and act on
the parameters the method trains:

- ``tuning.l2sp: <alpha>`` (Li et al., 2018, "L2-SP"): adds ``alpha / 2 * sum ||w - w_0||^2`` to the training
  objective, ``w_0`` the value each trainable parameter had when the method was applied (the pretrained weights
  for full fine-tuning; a LoRA B matrix's zeros), so training stays near its starting point. It is applied as its
  gradient, ``alpha * (w - w_0)`` added to each parameter's before the optimizer step (no extra autograd memory;
  once per step whatever the gradient accumulation). The task head, which has no pretrained value, is left to
  ``optimizer.weight_decay``. The starting values are a copy of the trained parameters kept beside the model (for
  full fine-tuning, one more model's worth of memory), taken from the pretrained weights again when a run resumes
  and never written to checkpoints. The penalty's value is logged as ``train/l2sp`` (not added to ``train/loss``).
- ``tuning.unfreeze: epoch`` or ``<N>`` (gradual unfreezing, ULMFiT, Howard & Ruder, 2018): the first epoch
  (or N optimizer steps) trains only the head and what follows the last transformer block, each further one
  also the next block down, and the embeddings last. Depths are those of ``optimizer.layer_decay``
  (``tunelab.optim.parameter_depths``). A parameter not yet unfrozen keeps its value and its optimizer state:
  its gradient is dropped before each optimizer step (and before clipping), so the optimizer and the learning
  rate schedule see every trained parameter from the start, under DDP and FSDP alike. Backward still runs
  through the whole model: unfreezing saves no compute. Logged as ``train/unfrozen_depth``. Not with AdaLoRA,
  whose rank allocation reads every adapter weight's gradient.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.tuning.parts import head_parameter_names

log = logging.getLogger(__name__)


def check_recipes(l2sp: object, unfreeze: object) -> None:
    """``tuning.l2sp``: null or a number >= 0; ``tuning.unfreeze``: null, ``epoch`` or a whole number >= 1."""
    if l2sp is not None and (isinstance(l2sp, bool) or not isinstance(l2sp, int | float) or l2sp < 0):
        raise ConfigError(f"tuning.l2sp must be null (off) or a number >= 0 (L2-SP's alpha), got {l2sp!r}")
    if unfreeze is not None and unfreeze != "epoch" and (isinstance(unfreeze, bool) or not isinstance(unfreeze, int)
                                                         or unfreeze < 1):
        raise ConfigError("tuning.unfreeze must be null (off), epoch (one block more per epoch) or a whole number "
                          f"of optimizer steps >= 1, got {unfreeze!r}")


def head_parameter_ids(model: nn.Module) -> set[int]:
    """The task head's parameters (``tunelab.tuning.parts.head_parameter_names``), also inside a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = head_parameter_names(base)
    return {id(p) for n, p in base.named_parameters() if n in names}


class Recipes:
    """The recipes of one run over the model its tuning method returned (see the module docstring)."""

    def __init__(self, model: nn.Module, l2sp: float | None = None, unfreeze: int | str | None = None):
        """``l2sp`` and ``unfreeze`` as the tuning strategy checked them (``check_recipes``)."""
        self.alpha = float(l2sp) if l2sp else 0.0
        self.unfreeze = unfreeze
        # L2-SP: the starting value of each trained parameter but the head, by name; plain tensors, not buffers
        # (DDP would broadcast buffers every step), moved to the parameters' device when training starts
        self._start: dict[str, torch.Tensor] = {}
        if self.alpha:
            head = head_parameter_ids(model)
            self._start = {name: param.detach().clone() for name, param in model.named_parameters()
                           if param.requires_grad and id(param) not in head}
            if not self._start:
                raise ConfigError("tuning.l2sp is set, but the method trains nothing outside the task head "
                                  "(L2-SP pulls the other trained weights towards their start); set tuning.l2sp=null")
        self._depths: dict[str, int] = {}
        self._stage = -1
        if unfreeze is not None:
            if any("lora_E" in name for name, _ in model.named_parameters()):
                raise ConfigError("tuning.unfreeze does not combine with tuning=adalora: its rank allocation scores "
                                  "every adapter weight's gradient at each step; set tuning.unfreeze=null")
            from tunelab.optim import parameter_depths  # here: tunelab.optim imports the tuning package

            try:
                self._depths = parameter_depths(model)
            except ConfigError:
                raise ConfigError(f"tuning.unfreeze: could not find the transformer blocks of {type(model).__name__} "
                                  "(a ModuleList of *Layer / *Block modules); set tuning.unfreeze=null") from None

    def check(self, trainer: Any, model: nn.Module) -> None:
        """At the start of training: L2-SP needs whole parameters (not FSDP shards) and its starting weights on
        their parameters' device; say how deep unfreezing reaches."""
        if self.alpha:
            if type(trainer.strategy).__name__ in ("FSDP2Strategy", "FSDPStrategy", "ModelParallelStrategy"):
                raise ConfigError("tuning.l2sp does not work with trainer=fsdp yet (its starting weights are not "
                                  "sharded): use trainer=ddp, or set tuning.l2sp=null")
            params = dict(model.named_parameters())
            self._start = {name: start.to(params[name].device, params[name].dtype) for name, start in self._start.items()}
        if self.unfreeze is None:
            return
        deepest = max(self._depths.values())
        per = "epoch" if self.unfreeze == "epoch" else f"{self.unfreeze} optimizer steps"
        stages = trainer.max_epochs if self.unfreeze == "epoch" else -(-int(trainer.estimated_stepping_batches) // self.unfreeze)
        if stages is not None and stages > 0 and stages <= deepest:
            log.warning("tuning.unfreeze: one block more every %s over %d stages reaches depth %d of %d: the lowest %d "
                        "levels (the embeddings at %d) never train", per, stages, stages - 1, deepest,
                        deepest - stages + 1, deepest)

    def stage(self, trainer: Any) -> int:
        """How deep training reaches now: 0 the head only, 1 also the top block, ..."""
        return trainer.current_epoch if self.unfreeze == "epoch" else trainer.global_step // int(self.unfreeze)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """L2-SP's ``alpha / 2 * sum ||w - w_0||^2`` now, in float32 (None when off)."""
        if not self.alpha:
            return None
        params = dict(model.named_parameters())
        with torch.no_grad():
            total = sum(((params[name].float() - start.float()) ** 2).sum() for name, start in self._start.items())
        return 0.5 * self.alpha * total

    def before_optimizer_step(self, model: nn.Module, trainer: Any) -> dict[str, float]:
        """Gradual unfreezing drops the gradients of parameters deeper than the current stage; then L2-SP adds its
        gradient ``alpha * (w - w_0)`` to those that have one (after the task loss's gradients are averaged over
        micro-batches and ranks, once per step, and before clipping). Returns the values to log."""
        logged: dict[str, float] = {}
        if self.unfreeze is not None:
            stage = self.stage(trainer)
            if stage != self._stage:
                self._stage = stage
                log.info("tuning.unfreeze: training to depth %d of %d (0: the head)", stage, max(self._depths.values()))
            for name, param in model.named_parameters():
                if param.grad is not None and self._depths[name] > stage:
                    param.grad = None
            logged["train/unfrozen_depth"] = float(stage)
        if self.alpha:
            logged["train/l2sp"] = float(self.penalty(model))
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, start in self._start.items():
                    grad = params[name].grad
                    if grad is not None:
                        grad.add_(params[name].detach() - start, alpha=self.alpha)
        return logged
