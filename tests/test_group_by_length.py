"""--group_by_length: batches of rows of similar length. The plans are checked against plans built by hand here."""
from __future__ import annotations

import numpy as np

from data_utils.batching import GROUP_BATCHES, MultiTaskSampler


def _padding(plan, lens) -> int:
    return int(sum(lens[b].max() * len(b) - lens[b].sum() for _, b in plan))


def test_off_is_the_plain_shuffled_plan():
    # by hand: numpy's generator seeded [seed, epoch]; one permutation per task (sorted names), cut into batches,
    # then one permutation of the batch list
    s = MultiTaskSampler({"rte": 23, "mrpc": 10}, 4, seed=7)
    rng = np.random.default_rng([7, 0])
    batches = []
    for task, n in (("mrpc", 10), ("rte", 23)):
        perm = rng.permutation(n)
        batches += [(task, perm[i: i + 4]) for i in range(0, n, 4)]
    order = rng.permutation(len(batches))
    expect = [batches[i] for i in order]
    got = s.epoch_plan(0)
    assert [t for t, _ in got] == [t for t, _ in expect]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expect))


def test_on_every_row_once_sorted_within_groups_and_less_padding():
    rng = np.random.default_rng(0)
    n, batch = 1000, 8
    lens = rng.integers(5, 128, size=n)
    plain = MultiTaskSampler({"sst": n}, batch, seed=3)
    grouped = MultiTaskSampler({"sst": n}, batch, seed=3, lengths={"sst": lens})
    plan = grouped.epoch_plan(0)
    rows = np.concatenate([b for _, b in plan])
    assert sorted(rows.tolist()) == list(range(n))
    # the rows before batching: the same permutation as without grouping, sorted (longest first) per group
    perm = np.random.default_rng([3, 0]).permutation(n)
    group = GROUP_BATCHES * batch
    by_hand = np.concatenate([sorted(perm[i: i + group], key=lambda r: -lens[r]) for i in range(0, n, group)])
    assert sorted(map(tuple, (np.sort(b) for _, b in plan))) == sorted(
        tuple(np.sort(by_hand[i: i + batch])) for i in range(0, n, batch))
    assert _padding(plan, lens) < 0.25 * _padding(plain.epoch_plan(0), lens)
