"""The optimizer of a run: its config's class over the trainable parameters, in two weight-decay groups
(split further by depth with ``optimizer.layer_decay``), with torch's fused kernel wherever the class has one.

``optimizer.layer_decay`` (null: off) is layer-wise learning-rate decay (LLRD, as in ELECTRA and BEiT): a
parameter's rate is ``lr * layer_decay ** depth``, where depth counts from the top: 0 for the head and anything
after the last transformer block (pooler, classifier, peft's ``modules_to_save`` copies, prompt encoders), 1 for
the top block, ..., ``n_blocks`` for the lowest block and ``n_blocks + 1`` for the embeddings (everything before
the first block). The blocks are those ``tuning=freeze`` counts (``tunelab.tuning.parts``), found in peft-wrapped
models too; an encoder-decoder's decoder blocks sit above its encoder's.
A tuning strategy may build its own groups (``tuning=loraplus``: ``TuningStrategy.optimizer``).

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
#: Keys of ``optimizer`` that tunelab reads itself (not arguments of the optimizer class).
OWN_KEYS = frozenset({"layer_decay"})


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


def parameter_depths(model: nn.Module) -> dict[str, int]:
    """Each parameter's depth from the top: 0 for the head and anything after the last block, 1 for the top
    block, ..., ``n_blocks + 1`` for the embeddings (anything before the first block). The blocks are
    ``tunelab.tuning.parts.find_blocks``'s; a parameter between two of them (T5's encoder final norm) takes
    the depth of the block below it."""
    from tunelab.tuning.parts import find_blocks  # here: the tuning package imports this module

    try:
        blocks = [f"{name}." for name, _ in find_blocks(model)]
    except ConfigError:
        raise ConfigError(f"optimizer.layer_decay: could not find the transformer blocks of {type(model).__name__} "
                          "(a ModuleList of *Layer / *Block modules); set optimizer.layer_decay=null for this model") from None
    names = [n for n, _ in model.named_parameters()]
    block_of = {i: next((b for b, prefix in enumerate(blocks) if n.startswith(prefix)), None) for i, n in enumerate(names)}
    inside = [i for i, b in block_of.items() if b is not None]
    depths, below = {}, len(blocks) + 1
    for i, name in enumerate(names):
        if block_of[i] is not None:
            below = len(blocks) - block_of[i]
        depths[name] = 0 if i > inside[-1] else below
    return depths


def check_layer_decay(value: object) -> None:
    """``optimizer.layer_decay``: null (off) or a number in (0, 1]."""
    if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1):
        raise ConfigError(f"optimizer.layer_decay must be null (off) or a number in (0, 1], got {value!r}")


def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, layer_decay: float) -> list[dict[str, Any]]:
    """The weight-decay groups split by depth: ``lr * layer_decay ** depth`` (``parameter_depths``), top first."""
    depths = parameter_depths(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for group in weight_decay_groups(model, weight_decay):
        ids = {id(p) for p in group["params"]}
        decayed = group["weight_decay"] != 0.0
        for name, param in model.named_parameters():
            if id(param) in ids:
                depth = depths[name]
                groups.setdefault((depth, decayed), {"params": [], "weight_decay": group["weight_decay"],
                                                     "lr": lr * layer_decay ** depth})["params"].append(param)
    return [groups[k] for k in sorted(groups)]


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
    """``cfg``'s optimizer (``_target_`` and its arguments, ``fused`` and ``layer_decay`` as above) over ``model``'s
    trainable parameters."""
    cfg = dict(cfg)
    layer_decay = cfg.pop("layer_decay", None)
    check_layer_decay(layer_decay)
    weight_decay = cfg.get("weight_decay", 0.0) or 0.0
    if layer_decay is not None:
        groups = layer_decay_groups(model, weight_decay, cfg["lr"], layer_decay)
    else:
        groups = weight_decay_groups(model, weight_decay)
    return instantiate(optimizer_arguments(cfg, groups, clipping_under_mixed_precision), _partial_=True)(groups)


def optimizer_arguments(cfg: Mapping[str, Any], groups: list[dict[str, Any]], clipping_under_mixed_precision: bool) -> dict[str, Any]:
    """``cfg`` without tunelab's own keys, with ``fused`` resolved for the parameters of ``groups``."""
    cfg = {k: v for k, v in cfg.items() if k not in OWN_KEYS}
    fused = fused_setting(cfg, [p for g in groups for p in g["params"]], clipping_under_mixed_precision)
    cfg.pop("fused", None)
    if fused is not None:
        cfg["fused"] = fused
    return cfg
