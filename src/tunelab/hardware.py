"""The hardware a run trains on: ``trainer.accelerator=auto`` and ``trainer.precision=auto`` made concrete.

The default trainer config (``trainer=default``) asks for ``auto`` in both, so the same command trains on
the GPU where there is one (bf16 mixed precision where the GPU supports it) and in fp32 on CPUs (bf16 is
several times slower than fp32 on most CPUs). The choice is logged at start and recorded in
``metrics.json``; the recipe (epochs, rates, batch sizes) never depends on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

GPU_ACCELERATORS = ("gpu", "cuda")


def resolve_accelerator(accelerator: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is available, else ``cpu``; other values as they are."""
    if accelerator != "auto":
        return accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """``auto`` -> ``bf16-mixed`` on a CUDA GPU that supports bf16, else ``32-true``."""
    if str(precision) != "auto":
        return precision
    if accelerator in GPU_ACCELERATORS and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def hardware_overrides(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer arguments that replace ``auto`` accelerator and precision by what this machine has."""
    accelerator = resolve_accelerator(str(trainer_cfg.get("accelerator", "auto")))
    precision = resolve_precision(trainer_cfg.get("precision", "32-true"), accelerator)
    device = torch.cuda.get_device_name(0) if accelerator in GPU_ACCELERATORS and torch.cuda.is_available() else "CPU"
    log.info("hardware: accelerator %s (%s), precision %s", accelerator, device, precision)
    return {"accelerator": accelerator, "precision": precision}
