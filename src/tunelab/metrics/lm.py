"""Language-modelling metrics: perplexity = exp(token-weighted mean negative log-likelihood).

The states are two sums (NLL x tokens, tokens), so the metric keeps no logits, needs no second
softmax over the vocabulary (it reuses the model's loss) and syncs across ranks by summation.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric, MetricCollection


class Perplexity(Metric):
    """``exp(sum(loss_b * tokens_b) / sum(tokens_b))`` over the batches ``b`` of an epoch.

    ``update(loss, tokens)`` takes a batch's mean loss over its ``tokens`` target tokens (what
    Hugging Face LM heads return). Weighting by tokens matters: the mean of per-batch losses is
    wrong when batches hold different numbers of targets (masked tokens vary, the last block is short).
    A batch without targets (its loss is NaN) adds nothing. (torchmetrics' ``MeanMetric`` would do,
    but with ``nan_strategy="disable"`` it drops the weights, and the other strategies sync the GPU.)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, tokens: torch.Tensor) -> None:
        loss = torch.as_tensor(loss, device=self.device).double()
        tokens = torch.as_tensor(tokens, device=self.device).long()
        self.nll_sum += torch.where(tokens > 0, loss * tokens, torch.zeros_like(loss)).sum()
        self.tokens += tokens.sum()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.tokens).float()


def lm_metrics() -> MetricCollection:
    return MetricCollection({"perplexity": Perplexity()})
