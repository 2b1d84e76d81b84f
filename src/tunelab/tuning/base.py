"""The interface every tuning strategy implements."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedModel


class TuningStrategy:
    """Decides which parameters of a task model train, and how the result is saved.

    ``apply`` receives the full task model (backbone + head) and returns the model to train.
    """

    name: str = "base"

    def __init__(self, name: str | None = None):
        self.name = name or type(self).name

    def apply(self, model: PreTrainedModel) -> nn.Module:
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        """Save in Hugging Face format (``from_pretrained`` loads it)."""
        model.save_pretrained(path)
