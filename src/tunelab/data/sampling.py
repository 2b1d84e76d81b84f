"""Samplers that put examples of similar length in the same batch, so little padding is fed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler
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


class DistributedLengthGroupedSampler(DistributedSampler):
    """Length-grouped training order for one rank of ``num_replicas``.

    Every rank builds the same grouped order of the whole set for (seed, epoch) and takes every
    ``num_replicas``-th example, so each rank's batches stay length-homogeneous, the ranks see
    disjoint shards that reshuffle each epoch, and all ranks run the same number of steps (the set
    is padded with its first examples to a multiple of ``num_replicas``, as ``DistributedSampler`` does).
    Lightning leaves a ``DistributedSampler`` as it is, instead of wrapping it.
    """

    def __init__(self, batch_size: int, lengths: Sequence[int], num_replicas: int, rank: int, seed: int = 0):
        super().__init__(range(len(lengths)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = get_length_grouped_indices(self.lengths, self.batch_size * self.num_replicas, generator=generator)
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])


class DistributedEvalSampler(DistributedSampler):
    """An evaluation order split across ranks without padding: each example is scored exactly once
    (``DistributedSampler`` repeats examples to even out the ranks, which skews metrics).

    Ranks may get one example fewer; in evaluation that is safe, as long as each rank has one.
    """

    def __init__(self, order: Sequence[int], num_replicas: int, rank: int):
        super().__init__(range(len(order)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.order = list(order)
        self.num_samples = len(self.order[rank::num_replicas])
        self.total_size = len(self.order)
        if self.num_samples == 0:
            raise ValueError(f"an evaluation set of {len(order)} examples cannot be split across {num_replicas} ranks")

    def __iter__(self) -> Iterator[int]:
        return iter(self.order[self.rank :: self.num_replicas])
