import pytest
from torch.utils.data import DistributedSampler

from lightning_blip.data.sampler import ResumableDistributedSampler, sample_seed

DATASET = list(range(23))


def _pair(rank: int, epoch: int = 3, **kw) -> tuple[ResumableDistributedSampler, DistributedSampler]:
    kw = {"num_replicas": 2, "rank": rank, "shuffle": True, "seed": 11, **kw}
    ours, reference = ResumableDistributedSampler(DATASET, **kw), DistributedSampler(DATASET, **kw)
    ours.set_epoch(epoch)
    reference.set_epoch(epoch)
    return ours, reference


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_order_equals_distributed_sampler(drop_last: bool, shuffle: bool) -> None:
    for rank in (0, 1):
        ours, reference = _pair(rank, drop_last=drop_last, shuffle=shuffle)
        pairs = list(ours)
        assert [index for index, _ in pairs] == list(reference)
        assert [seed for _, seed in pairs] == [sample_seed(11, 3, index) for index, _ in pairs]
        assert len(ours) == len(reference) == len(pairs)


def test_two_replicas_cover_disjoint_shares() -> None:
    shares = [[i for i, _ in _pair(rank, drop_last=True)[0]] for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 11
    assert not set(shares[0]) & set(shares[1])
    assert len(set(shares[0]) | set(shares[1])) == 22


def test_permutation_and_seeds_change_with_the_epoch() -> None:
    ours = _pair(0)[0]
    first = list(ours)
    ours.set_epoch(4)
    second = list(ours)
    assert [i for i, _ in first] != [i for i, _ in second]
    seeds_by_index = {i: s for i, s in first}
    assert all(seeds_by_index[i] != s for i, s in second if i in seeds_by_index)


def test_yield_seeds_false_gives_plain_indices() -> None:
    ours, reference = _pair(1)
    ours.yield_seeds = False
    assert list(ours) == list(reference)
    unseeded = ResumableDistributedSampler(DATASET, num_replicas=2, rank=1, seed=11, yield_seeds=False)
    unseeded.set_epoch(3)
    assert list(unseeded) == list(reference)


def test_skip_gives_the_tail_once_and_keeps_the_length() -> None:
    ours = _pair(0)[0]
    full = list(ours)
    ours.skip(5)
    assert len(ours) == len(full)  # Lightning counts the skipped batches as done (see the class docstring)
    assert list(ours) == full[5:]
    assert list(ours) == full  # the skip applies to one iteration only


def test_skip_survives_set_epoch_to_the_same_epoch_but_not_to_another() -> None:
    ours = _pair(0)[0]
    full = list(ours)
    ours.skip(3)
    ours.set_epoch(3)  # Lightning sets the (same) epoch again before iterating a resumed epoch
    assert list(ours) == full[3:]
    ours.skip(3)
    ours.set_epoch(4)
    assert len(list(ours)) == len(full)


def test_skip_past_the_end_gives_nothing_and_negative_raises() -> None:
    ours = _pair(0)[0]
    ours.skip(100)
    assert list(ours) == []
    with pytest.raises(ValueError):
        ours.skip(-1)


def test_sample_seed_is_a_deterministic_63_bit_hash() -> None:
    seeds = {sample_seed(0, epoch, index) for epoch in range(3) for index in range(1000)}
    assert len(seeds) == 3000
    assert all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3) != sample_seed(2, 1, 3)
    assert max(seeds) > 2**62  # uses the whole range
