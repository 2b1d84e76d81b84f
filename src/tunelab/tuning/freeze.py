"""Partial fine-tuning: freeze the embeddings and the lowest blocks, or the whole backbone."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from tunelab.errors import ConfigError
from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.parts import embedding_parameter_names, find_blocks, head_parameter_names, train_only


class Freeze(TuningStrategy):
    """Freeze the embeddings (``embeddings``) and the first ``n_blocks`` transformer blocks.

    ``n_blocks`` < 0 counts from the top: -2 trains only the top two blocks (and the head).
    ``head_only`` freezes the whole backbone: a linear probe of the task head.
    ``blocks`` overrides block auto-detection (see ``tunelab.tuning.parts``).
    """

    name = "freeze"

    def __init__(self, n_blocks: int = 0, embeddings: bool = True, head_only: bool = False, blocks: str | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.n_blocks, self.embeddings, self.head_only, self.blocks = n_blocks, embeddings, head_only, blocks

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        names = {n for n, _ in model.named_parameters()}
        head = head_parameter_names(model)
        if self.head_only:
            if not head:
                raise ConfigError(f"tuning.head_only: {type(model).__name__} has no separate task head to train")
            train_only(model, head)
            return model
        blocks = find_blocks(model, self.blocks)
        n = self.n_blocks if self.n_blocks >= 0 else len(blocks) + self.n_blocks
        if not 0 <= n <= len(blocks):
            raise ConfigError(
                f"tuning.n_blocks={self.n_blocks}, but {type(model).__name__} has {len(blocks)} transformer blocks "
                f"(use -{len(blocks)}..{len(blocks)})"
            )
        frozen = {f"{block_name}.{p}" for block_name, block in blocks[:n] for p, _ in block.named_parameters()}
        if self.embeddings:
            frozen |= embedding_parameter_names(model, blocks)
        train_only(model, names - frozen)
        return model
