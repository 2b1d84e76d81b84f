"""Perplexity: token-weighted over the epoch, NaN-free on batches without targets, summable across ranks."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from tunelab.metrics.lm import Perplexity, lm_metrics


def test_perplexity_weights_batches_by_target_tokens() -> None:
    metric = Perplexity()
    metric.update(torch.tensor(2.0), torch.tensor(10))
    metric.update(torch.tensor(1.0), torch.tensor(30))
    assert metric.compute().item() == pytest.approx(math.exp((2.0 * 10 + 1.0 * 30) / 40))  # exp(1.25)
    assert metric.compute().item() != pytest.approx(math.exp(1.5))  # the mean of batch means is wrong


def test_a_batch_without_targets_adds_nothing() -> None:
    metric = Perplexity()
    metric.update(torch.tensor(0.5), torch.tensor(4))
    metric.update(torch.tensor(float("nan")), torch.tensor(0))  # HF's mean loss over zero tokens
    assert metric.compute().item() == pytest.approx(math.exp(0.5))


def test_states_are_tensor_sums_that_merge_like_ranks() -> None:
    """DDP syncs metric states by their reduction: two 'ranks' merged equal one process over all batches."""
    batches = [(torch.tensor(3.0), torch.tensor(7)), (torch.tensor(1.5), torch.tensor(2)), (torch.tensor(0.2), torch.tensor(40))]
    single, rank0, rank1 = Perplexity(), Perplexity(), Perplexity()
    for loss, tokens in batches:
        single.update(loss, tokens)
    rank0.update(*batches[0])
    for loss, tokens in batches[1:]:
        rank1.update(loss, tokens)
    assert all(isinstance(getattr(rank0, s), torch.Tensor) for s in rank0._defaults)
    assert rank0._reductions == {"nll_sum": dim_zero_sum, "tokens": dim_zero_sum}  # synced by summation
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(single.compute().item())


def test_collection_names_the_metric() -> None:
    metrics = lm_metrics().clone(prefix="val/")
    metrics.update(torch.tensor(1.0), torch.tensor(3))
    assert metrics.compute()["val/perplexity"].item() == pytest.approx(math.e)
