"""Samplers that put examples of similar length in the same batch, so little padding is fed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped sampler, reproducible per (seed, epoch).

    Lightning calls ``set_epoch`` each epoch (also through its distributed wrapper), so a resumed
    run sees the same order as an uninterrupted one.
    """

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int = 0):
        super().__init__(batch_size=batch_size, lengths=list(lengths))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def sorted_by_length(lengths: Sequence[int]) -> list[int]:
    """Evaluation order: longest first, so batches are homogeneous and memory peaks early."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])
