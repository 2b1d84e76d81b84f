"""The optimizer of a run: its config's class over the trainable parameters, in two weight-decay groups,
with torch's fused kernel wherever the class has one.

``optimizer.fused`` takes ``auto`` (the presets' default), ``true`` or ``false``. A fused kernel updates all
parameters of a group in one call instead of a Python loop over them: on a 2-core CPU, AdamW's step over
MiniLM's 22.7M parameters takes 15 ms instead of 103 ms (``results/benchmarks/optimizer-step.md``), a tenth
of a training step at batch 32. ``auto`` uses it when the class takes ``fused`` (Adam, AdamW, SGD, Adagrad)
and every parameter sits on a device with fused kernels, except in one case: Lightning refuses gradient
clipping with an optimizer that unscales gradients itself, which the fused ones declare, under mixed
precision (``16-mixed`` and ``bf16-mixed`` alike), so there ``auto`` leaves torch's default (``foreach`` on
GPUs) and ``true`` stops the run at start-up.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from torch import nn
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.RMSNorm)
FUSED_CHOICES = ("auto", True, False)


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Biases and normalisation weights: excluded from weight decay, as in BERT's recipe."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or isinstance(module, NORM_LAYERS) or "norm" in type(module).__name__.lower():
                names.add(full)
    return names


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: decayed, and biases + normalisation weights (not decayed)."""
    skip = no_decay_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("no trainable parameters: the tuning strategy froze the whole model")
    groups = [
        {"params": [p for n, p in named if n not in skip], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in skip], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _takes_fused(target: str) -> bool:
    try:
        cls = get_class(target)
    except Exception:  # a class that cannot be imported fails in instantiate, with its message
        return False
    return "fused" in inspect.signature(cls).parameters


def check_fused_choice(choice: object) -> None:
    """``optimizer.fused`` must be auto, true or false (checked at start-up and when a checkpoint's config is used)."""
    if choice not in FUSED_CHOICES:
        raise ConfigError(f"optimizer.fused must be auto, true or false, got {choice!r}")


def fused_setting(cfg: Mapping[str, Any], params: Iterable[torch.Tensor], clipping_under_mixed_precision: bool) -> bool | None:
    """What ``fused=`` the optimizer gets from ``optimizer.fused`` (``None``: the class's own default)."""
    choice = cfg.get("fused", False)
    check_fused_choice(choice)
    if choice is False or (choice == "auto" and cfg.get("foreach")):  # torch takes one of the two
        return None
    target = str(cfg["_target_"])
    if not _takes_fused(target):
        if choice is True:
            raise ConfigError(f"optimizer.fused=true: {target} has no fused kernel (torch's Adam, AdamW, SGD and Adagrad do)")
        return None
    supported = set(_get_fused_kernels_supported_devices())
    devices = {p.device.type for p in params}
    floating = all(p.is_floating_point() for p in params)
    if choice is True:
        if clipping_under_mixed_precision:
            raise ConfigError("optimizer.fused=true with trainer.gradient_clip_val > 0 under mixed precision: Lightning "
                              "refuses to clip the gradients of a fused optimizer; set optimizer.fused=auto (or false) "
                              "or trainer.gradient_clip_val=null")
        if not devices <= supported or not floating:
            raise ConfigError(f"optimizer.fused=true: {target}'s fused kernel takes floating-point parameters on "
                              f"{sorted(supported)}; these are {'non-floating, ' if not floating else ''}on {sorted(devices)}")
        return True
    if clipping_under_mixed_precision:
        log.info("optimizer.fused=auto: not fused (Lightning does not clip a fused optimizer's gradients under mixed precision)")
        return None
    return (devices <= supported and floating) or None


def build_optimizer(cfg: Mapping[str, Any], model: nn.Module, clipping_under_mixed_precision: bool = False) -> torch.optim.Optimizer:
    """``cfg``'s optimizer (``_target_`` and its arguments, ``fused`` as above) over ``model``'s trainable parameters."""
    cfg = dict(cfg)
    groups = weight_decay_groups(model, cfg.get("weight_decay", 0.0) or 0.0)
    fused = fused_setting(cfg, [p for g in groups for p in g["params"]], clipping_under_mixed_precision)
    cfg.pop("fused", None)
    if fused is not None:
        cfg["fused"] = fused
    return instantiate(cfg, _partial_=True)(groups)
