"""LoRA+ (Hayou et al., 2024): LoRA whose B matrices train at ``lr_ratio`` times the rate of its A matrices.

The groups are peft's (``peft.optimizers.create_loraplus_optimizer``): LoRA's A matrices and the other 2-d
parameters (the task head) at ``optimizer.lr``, B matrices and 1-d parameters (biases, norms) at
``lr_ratio * lr``, LoRA on embedding layers at ``lr_embedding``; ``optimizer.weight_decay`` on all but the 1-d
parameters. The adapter it exports is a plain LoRA adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_class
from peft import PeftConfig
from torch import nn

from tunelab.errors import ConfigError
from tunelab.optim import optimizer_arguments
from tunelab.tuning.peft import Peft


class LoraPlus(Peft):
    """``tuning.peft`` is a ``LoraConfig``; ``lr_ratio`` (>= 1) is LoRA+'s lambda = lr_B / lr_A."""

    def __init__(self, peft: PeftConfig, lr_ratio: float = 16.0, lr_embedding: float = 1e-6, **kwargs: Any):
        if not isinstance(lr_ratio, int | float) or lr_ratio < 1:
            raise ConfigError(f"tuning.lr_ratio (LoRA+'s lr_B / lr_A) must be a number >= 1, got {lr_ratio!r}")
        super().__init__(peft, **kwargs)
        self.lr_ratio, self.lr_embedding = float(lr_ratio), float(lr_embedding)

    def optimizer(self, cfg: Mapping[str, Any], model: nn.Module,
                  clipping_under_mixed_precision: bool = False) -> torch.optim.Optimizer:
        from peft.optimizers import create_loraplus_optimizer

        if cfg.get("layer_decay") is not None:
            raise ConfigError("optimizer.layer_decay does not combine with tuning=loraplus (LoRA+ sets its own "
                              "per-group rates): set optimizer.layer_decay=null")
        trainable = [p for p in model.parameters() if p.requires_grad]
        kwargs = optimizer_arguments(cfg, [{"params": trainable}], clipping_under_mixed_precision)
        cls = get_class(str(kwargs.pop("_target_")))
        kwargs.pop("_partial_", None)
        lr = kwargs.pop("lr")
        kwargs["loraplus_weight_decay"] = kwargs.pop("weight_decay", 0.0) or 0.0
        return create_loraplus_optimizer(model, cls, lr=lr, loraplus_lr_ratio=self.lr_ratio,
                                         loraplus_lr_embedding=self.lr_embedding, **kwargs)
