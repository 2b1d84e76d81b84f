from tunelab.data.sampling import EpochLengthGroupedSampler, sorted_by_length


def test_length_grouped_order_is_a_permutation_fixed_per_seed_and_epoch() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(500)]
    sampler = EpochLengthGroupedSampler(batch_size=10, lengths=lengths, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(500))
    assert list(sampler) == first  # same epoch, same order (a resumed run sees the same batches)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(500))
    other_seed = EpochLengthGroupedSampler(batch_size=10, lengths=lengths, seed=4)
    assert list(other_seed) != first


def test_eval_order_is_longest_first() -> None:
    assert sorted_by_length([3, 9, 1, 5]) == [1, 3, 0, 2]
