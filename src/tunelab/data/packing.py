"""Packing for decoder SFT (``task.data.packing=true``): a batch's examples laid end to end in one row.

transformers' ``DataCollatorWithFlattening`` concatenates the examples without padding and numbers each
one's positions from 0. Without an ``attention_mask``, transformers reads those restarting ``position_ids``
as packed sequences: flash attention runs varlen kernels over them, and SDPA/eager attention (the CPU) get
a block-diagonal causal mask, so no token attends to another example. Every label of an example's first
token is ``IGNORE_INDEX``, so no example is trained to continue the one before it.

A model whose attention ignores that convention (an architecture outside transformers' mask utilities, or
prompt/prefix tuning, whose virtual tokens precede the whole row) would attend across examples:
``check_packing_support`` runs the model once on two packed sequences and stops the run if it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithFlattening

from tunelab.batch import IGNORE_INDEX
from tunelab.errors import ConfigError

KEY = "task.data.packing"


def pack(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """One row (batch size 1) of ``input_ids``, ``labels`` and per-example ``position_ids``."""
    flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    return flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])


@torch.no_grad()
def attends_across_packed_examples(model: nn.Module, atol: float = 1e-4) -> bool:
    """Whether ``model``'s second example of a packed row sees the first (its logits differ from those of
    the example alone)."""
    first, second = [3, 4, 5, 6], [7, 8, 9]
    packed = pack([{"input_ids": first, "labels": first}, {"input_ids": second, "labels": second}])
    was_training = model.training
    model.eval()
    try:
        # no KV cache, as in training: transformers reads packed positions only without one
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([second]), position_ids=torch.arange(len(second))[None], use_cache=False).logits
        together, alone = together[0, -len(second):], alone[0, -len(second):]
    finally:
        model.train(was_training)
    return not torch.allclose(together.float(), alone.float(), atol=atol)


def check_packing_support(model: nn.Module) -> None:
    """A ConfigError when ``model`` would attend across packed examples."""
    if attends_across_packed_examples(model):
        raise ConfigError(
            f"{KEY}=true, but {type(model).__name__} attends across the examples of a packed row (prompt and prefix "
            f"tuning put their virtual tokens before the whole row; some architectures ignore per-example position "
            f"ids): set {KEY}=false, or use another tuning method"
        )

