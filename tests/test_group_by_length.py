"""--group_by_length: batches of rows of similar length. The plans are checked against plans built by hand here."""
from __future__ import annotations

import numpy as np
import pytest

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


def _grouped_pass_by_hand(rng, n, lens, global_batch):
    """One pass over a task's rows, written out from the docstring: a permutation drawn from ``rng``, each run of
    GROUP_BATCHES global batches of it sorted longest first (Python's sort is stable: ties keep the permutation's
    order), then cut into global batches."""
    perm = rng.permutation(n).tolist()
    group = GROUP_BATCHES * global_batch
    rows = [r for i in range(0, n, group) for r in sorted(perm[i: i + group], key=lambda r: -lens[r])]
    return [rows[i: i + global_batch] for i in range(0, n, global_batch)]


def test_on_proportional_plan_by_hand_with_ties_and_a_short_last_group():
    # expected: the plan rebuilt by hand (numpy's generator seeded [seed, epoch], tasks in sorted order, then one
    # permutation of all batches). Lengths 1..3 give many ties, which a stable sort keeps in permutation order;
    # 250 rows are two full groups of 100 (50 batches of 2) and a short one of 50.
    sizes = {"rte": 37, "cola": 250}
    lengths = {t: np.random.default_rng(i).integers(1, 4, size=n) for i, (t, n) in enumerate(sizes.items())}
    for batch_size, world_size, seed, epoch in ((2, 1, 3, 0), (2, 2, 8, 1)):
        s = MultiTaskSampler(sizes, batch_size, seed=seed, world_size=world_size, lengths=lengths)
        gb = batch_size * world_size
        rng = np.random.default_rng([seed, epoch])
        batches = [(t, b) for t in ("cola", "rte") for b in _grouped_pass_by_hand(rng, sizes[t], lengths[t], gb)]
        expect = [batches[i] for i in rng.permutation(len(batches))]
        got = s.epoch_plan(epoch)
        assert [(t, b.tolist()) for t, b in got] == expect


def test_on_uniform_sampling_plan_by_hand():
    # expected: the sampled plan rebuilt by hand (one draw of all steps' tasks, then each task's passes built
    # when its queue runs dry, as the class docstring describes); every pass is length-grouped
    sizes = {"big": 130, "small": 9}
    lengths = {"big": np.random.default_rng(5).integers(1, 6, size=130),
               "small": np.array([4, 4, 1, 7, 7, 2, 9, 4, 1])}
    s = MultiTaskSampler(sizes, 2, seed=4, sampling="uniform", lengths=lengths)
    rng = np.random.default_rng([4, 0])
    names = ["big", "small"]
    steps = 65 + 5  # ceil(130 / 2) + ceil(9 / 2)
    draws = rng.choice(2, size=steps, p=[0.5, 0.5])
    queues, expect = {"big": [], "small": []}, []
    for k in draws:
        t = names[k]
        if not queues[t]:
            queues[t] = _grouped_pass_by_hand(rng, sizes[t], lengths[t], 2)
        expect.append((t, queues[t].pop(0)))
    got = s.epoch_plan(0)
    assert sum(t == "small" for t, _ in got) > 5  # the small task cycles through more than one pass
    assert [(t, b.tolist()) for t, b in got] == expect


def test_on_with_a_task_without_rows():
    # a task with no rows has no batch; the other task's rows each appear once, longest first within the one group
    lens = np.array([3, 9, 1, 9, 5])
    s = MultiTaskSampler({"empty": 0, "rte": 5}, 2, seed=1, lengths={"empty": np.zeros(0, dtype=int), "rte": lens})
    plan = s.epoch_plan(0)
    assert {t for t, _ in plan} == {"rte"} and len(plan) == 3
    rows = [r for _, b in plan for r in b.tolist()]
    assert sorted(rows) == [0, 1, 2, 3, 4]
    # one group holds all 5 rows, so the three batches are [9, 9], [5, 3], [1] by length (the two 9s in
    # permutation order), in shuffled batch order
    assert sorted(sorted(lens[b].tolist()) for _, b in plan) == [[1], [3, 5], [9, 9]]


def test_lengths_must_match_the_sizes():
    with pytest.raises(ValueError, match="^lengths must give one length per row of every task$"):
        MultiTaskSampler({"rte": 5, "mrpc": 2}, 2, seed=0, lengths={"rte": [1, 2, 3, 4, 5], "mrpc": [1]})
    MultiTaskSampler({"rte": 5}, 2, seed=0, lengths={"rte": [1, 2, 3, 4, 5]})  # one per row: accepted
