"""Token-budget training batches (``task.data.max_tokens``): as many examples as fit a budget of fed tokens.

With a fixed ``batch_size``, a batch of short texts is a handful of tiny matrix products and a batch of long
ones is the memory peak. A token budget (fairseq's ``--max-tokens``) instead fills every batch to about the
same number of fed tokens: examples per batch x padded length (x choices for multiple choice; a packed row
counts its real tokens). The batches are cut once: the training examples sorted by length (ties in a seeded
random order), then filled greedily, so every epoch has the same batches, in an order shuffled per
(seed, epoch). Across ranks each takes every ``num_replicas``-th batch of that order, the list padded with
its first batches so every rank runs the same number of steps.

The loss stays each batch's mean over its examples, so batches of many short examples and of few long ones
weigh the same in a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

from tunelab.errors import ConfigError

KEY = "task.data.max_tokens"

Cost = Callable[[int, int, int], int]
"""Fed tokens of a batch from its number of examples, its longest example and its real tokens."""


def padded_cost(pad_to_multiple_of: int | None = None, width: int = 1) -> Cost:
    """Examples x the longest length (rounded up to ``pad_to_multiple_of``) x ``width`` rows per example."""
    multiple = pad_to_multiple_of or 1

    def cost(examples: int, longest: int, real: int) -> int:
        return examples * math.ceil(longest / multiple) * multiple * width

    return cost


def packed_cost(examples: int, longest: int, real: int) -> int:
    """A packed row (``task.data.packing``) holds only real tokens."""
    return real


def budget_batches(lengths: Sequence[int], max_tokens: int, cost: Cost, seed: int) -> list[list[int]]:
    """The examples' indices cut into batches whose ``cost`` is at most ``max_tokens``, shortest first."""
    if max_tokens <= 0:
        raise ConfigError(f"{KEY} must be a positive number of tokens (got {max_tokens})")
    ties = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    order = sorted(ties, key=lambda i: lengths[i])  # stable: equal lengths keep the random order
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:  # ascending lengths: the example added is the batch's longest
        if current and cost(len(current) + 1, lengths[i], real + lengths[i]) > max_tokens:
            batches.append(current)
            current, real = [], 0
        if not current and cost(1, lengths[i], lengths[i]) > max_tokens:
            raise ConfigError(f"{KEY}={max_tokens} is smaller than one training example: example {i} alone feeds "
                              f"{cost(1, lengths[i], lengths[i])} tokens; raise {KEY} (at least "
                              "task.data.max_length) or lower task.data.max_length")
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Fixed token-budget batches, shuffled per (seed, epoch), split across ``num_replicas`` ranks.

    Lightning calls ``set_epoch`` each epoch, so a resumed run sees the order of an uninterrupted one.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, cost: Cost, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        self.batches = budget_batches(lengths, max_tokens, cost, seed)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = [self.batches[i] for i in torch.randperm(len(self.batches), generator=generator).tolist()]
        total = len(self) * self.num_replicas
        order = (order * self.num_replicas)[:total]  # padded with the first batches
        return iter(order[self.rank : total : self.num_replicas])
