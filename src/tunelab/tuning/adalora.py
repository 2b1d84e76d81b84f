"""AdaLoRA (Zhang et al., 2023): LoRA whose rank budget peft moves between layers while it trains.

peft prunes the least important singular values only when ``update_and_allocate(step)`` is called after each
optimizer step (while the gradients, from which it scores importance, are still there) and needs the run's
number of steps (``total_step``) for its budget schedule; this strategy does both. peft adds the orthogonality
regulariser to the loss whenever the wrapped model computes one; for a task that computes its own loss (token
classification) ``loss`` adds it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from peft import AdaLoraConfig
from torch import nn
from transformers import PreTrainedModel

from tunelab.errors import ConfigError
from tunelab.tuning.peft import Peft


def orthogonality_regulariser(model: nn.Module, adapter: str = "default") -> torch.Tensor:
    """AdaLoRA's R(P, Q): the mean over its ``lora_A`` / ``lora_B`` of ||P^T P - I||_F (as peft's forward computes it)."""
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)))
    return torch.stack(terms).mean() if terms else torch.zeros(())


class AdaLoRA(Peft):
    """``tuning.peft`` is a partial ``AdaLoraConfig`` (``_partial_: true``); ``total_step: null`` takes the run's
    optimizer steps (``trainer.estimated_stepping_batches``) at the first step."""

    def __init__(self, peft: Callable[..., AdaLoraConfig] | AdaLoraConfig, **kwargs: Any):
        if isinstance(peft, AdaLoraConfig):
            self.fill_total_step = False
        else:
            keywords = peft.keywords if isinstance(peft, functools.partial) else {}
            self.fill_total_step = keywords.get("total_step") is None
            # a placeholder that peft's checks accept, replaced by the run's steps before the first allocation
            placeholder = keywords.get("tinit", 0) + keywords.get("tfinal", 0) + 1
            peft = peft(total_step=placeholder) if self.fill_total_step else peft()
        super().__init__(peft, **kwargs)
        self._wrapped: nn.Module | None = None
        self._steps_checked = False
        self._loss_has_regulariser = True  # whether the last forward's own loss had peft's regulariser added

    def apply(self, model: PreTrainedModel) -> nn.Module:
        wrapped = super().apply(model)

        def record(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            self._loss_has_regulariser = getattr(output, "loss", None) is not None

        wrapped.base_model.register_forward_hook(record, with_kwargs=True)
        self._wrapped = wrapped
        return wrapped

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor], task_loss: torch.Tensor) -> torch.Tensor:
        if self._loss_has_regulariser:
            return task_loss
        return task_loss + self.peft_config.orth_reg_weight * orthogonality_regulariser(self._wrapped)

    def on_optimizer_step(self, model: nn.Module, trainer: Any) -> None:
        config = model.peft_config["default"]
        if not self._steps_checked:
            self._check_steps(config, int(trainer.estimated_stepping_batches))
        model.base_model.update_and_allocate(trainer.global_step)

    def _check_steps(self, config: AdaLoraConfig, steps: int) -> None:
        """Fill ``total_step`` with the run's ``steps`` where it is null; the final allocation (at step
        ``total_step - tfinal``, counting from 0) must happen before the run ends, or the export's ranks are not final."""
        if self.fill_total_step:
            config.total_step = steps
        if config.tinit >= config.total_step - config.tfinal:
            raise ConfigError(f"tuning.peft.tinit ({config.tinit}) + tuning.peft.tfinal ({config.tfinal}) leave no step "
                              f"to prune ranks in: tuning.peft.total_step is {config.total_step}; lower them or train longer")
        if config.total_step - config.tfinal > steps - 1:
            raise ConfigError(f"tuning.peft.total_step ({config.total_step}) - tuning.peft.tfinal ({config.tfinal}) is after "
                              f"the run's last optimizer step ({steps - 1}, from 0): the final rank allocation, which the "
                              "export holds, would never happen; set tuning.peft.tfinal >= 1 (and total_step null)")
        self._steps_checked = True
