"""What a batch is: the one module data collators and task modules both import.

A batch is a dict of tensors the model's forward takes (``input_ids``, ``attention_mask``, the targets
under ``TARGETS``) plus, under ``META``, per-example bookkeeping the model does not take (row ids,
QA offsets, reference texts, word alignments). Target positions that are not predicted (padding,
continuation sub-words, prompt tokens) hold ``IGNORE_INDEX``, the value transformers' losses skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

META = "meta"
IGNORE_INDEX = -100
# Forward arguments that are targets: a loss is computed from them; prediction leaves them out.
TARGETS = ("labels", "start_positions", "end_positions")


def model_inputs(batch: Mapping[str, Any], targets: bool = True) -> dict[str, Any]:
    """The forward arguments of ``batch``: everything but ``META``; without the ``TARGETS`` when
    ``targets`` is false (prediction: no loss, and no target-only inputs such as ``decoder_input_ids``)."""
    skip = {META} if targets else {META, *TARGETS, "decoder_input_ids"}
    return {k: v for k, v in batch.items() if k not in skip}


def with_meta(batch: Mapping[str, Any], meta: Mapping[str, list]) -> dict[str, Any]:
    """``batch`` with ``meta`` under ``META`` (left out when empty)."""
    out = dict(batch)
    if meta:
        out[META] = dict(meta)
    return out


def token_counts(batch: Mapping[str, Any]) -> tuple[int, int, int]:
    """Examples, real tokens and fed tokens (padding included) of a batch: from its ``attention_mask``, or, for
    a packed row (``tunelab.data.packing``: no mask, positions restarting at 0 for each example), from its
    ``position_ids``."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask.shape[0], int(mask.sum()), mask.numel()
    positions = batch["position_ids"]
    return int((positions == 0).sum()), positions.numel(), positions.numel()
