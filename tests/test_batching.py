"""Tests of data_utils.batching: the multi-task sampler (single process and distributed), resuming, eval batches."""
from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest
import torch

from data_utils.batching import MultiTaskSampler, eval_batches, seeded_subset, task_probabilities
from data_utils.features import Features

SIZES = {"rte": 37, "mrpc": 18, "sst": 64}  # remainders 5, 2 and 0 rows for a global batch of 8
BS = 8


def _epoch(sampler: MultiTaskSampler) -> list[tuple[str, list[int]]]:
    return [(t, list(rows)) for t, rows in sampler]


def _fake_features(n: int, seed: int = 0, task: str = "rte") -> Features:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (n,), generator=g).tolist()
    ids = [torch.arange(5, 5 + n_tok) for n_tok in lengths]
    return Features(task, "dev", ids, [torch.zeros(len(x), dtype=torch.long) for x in ids], [0] * n,
                    [str(i) for i in range(n)])


# ---- proportional (MT-DNN) ----------------------------------------------------------------------------------

def test_proportional_epoch_covers_every_row_once():
    sampler = MultiTaskSampler(SIZES, BS, seed=1)
    epoch = _epoch(sampler)
    assert len(epoch) == sampler.steps_per_epoch() == sum(math.ceil(n / BS) for n in SIZES.values())
    seen: dict[str, list[int]] = collections.defaultdict(list)
    batches = collections.Counter()
    for task, rows in epoch:
        assert task in SIZES
        assert 1 <= len(rows) <= BS
        assert all(isinstance(r, int) for r in rows)
        seen[task].extend(rows)
        batches[task] += 1
    for task, n in SIZES.items():
        assert sorted(seen[task]) == list(range(n)), task
        assert batches[task] == math.ceil(n / BS), task


def test_proportional_tasks_are_interleaved():
    tasks = [t for t, _ in _epoch(MultiTaskSampler(SIZES, BS, seed=0))]
    assert tasks != sorted(tasks)  # shuffled together, not one task after another
    runs = sum(1 for _ in itertools.groupby(tasks))
    assert runs > len(SIZES)


def test_order_differs_between_epochs_and_repeats_with_the_seed():
    a = MultiTaskSampler(SIZES, BS, seed=3)
    a0, a1 = _epoch(a), _epoch(a)
    assert a.state.epoch == 2 and a.state.position == 0
    assert a0 != a1
    b = MultiTaskSampler(SIZES, BS, seed=3)
    assert _epoch(b) == a0 and _epoch(b) == a1
    c = MultiTaskSampler(SIZES, BS, seed=4)
    assert _epoch(c) != a0


def test_epoch_plan_is_a_function_of_seed_and_epoch():
    a = MultiTaskSampler(SIZES, BS, seed=5)
    b = MultiTaskSampler(SIZES, BS, seed=5)
    _epoch(b)  # b has moved on; its plans are unchanged
    for epoch in (0, 1, 7):
        pa, pb = a.epoch_plan(epoch), b.epoch_plan(epoch)
        assert [(t, r.tolist()) for t, r in pa] == [(t, r.tolist()) for t, r in pb]


def test_bad_arguments():
    with pytest.raises(ValueError, match="^batch_size must be >= 1$"):
        MultiTaskSampler(SIZES, 0, seed=0)
    with pytest.raises(ValueError, match="proportional"):
        MultiTaskSampler(SIZES, BS, seed=0, sampling="random")


def test_batch_size_one_is_one_row_per_step():
    # by hand: 37 + 18 + 64 rows at one row a step is 119 steps of one row each
    epoch = _epoch(MultiTaskSampler(SIZES, 1, seed=0))
    assert len(epoch) == 119 and all(len(rows) == 1 for _, rows in epoch)


def test_temperature_defaults_to_one():
    # by hand: T = 1 makes the weights n^(1/1) = n, i.e. 30/40 and 10/40
    s = MultiTaskSampler({"a": 30, "b": 10}, 4, seed=0, sampling="temperature")
    assert s.probs == pytest.approx({"a": 0.75, "b": 0.25})


# ---- the --max_train_samples subset -------------------------------------------------------------------------

@pytest.mark.parametrize("n_rows,k,seed", [(50, 7, 1), (50, 7, 2), (1000, 30, 13), (10, 9, 0)])
def test_seeded_subset_is_the_documented_draw(n_rows, k, seed):
    # expected: the docstring's recipe written out (numpy's generator seeded [seed, 0x5EED], k of n_rows without
    # replacement, sorted into file order)
    expect = sorted(int(i) for i in np.random.default_rng([seed, 0x5EED]).choice(n_rows, k, replace=False))
    got = seeded_subset(n_rows, k, seed)
    assert got == expect
    assert len(set(got)) == k and all(0 <= i < n_rows for i in got) and got == sorted(got)


def test_seeded_subset_differs_by_seed_and_keeps_all_rows_when_k_is_large():
    assert seeded_subset(100, 10, 1) != seeded_subset(100, 10, 2)
    assert seeded_subset(6, 6, 3) == [0, 1, 2, 3, 4, 5]  # k = n: every row, in file order
    assert seeded_subset(4, 9, 3) == [0, 1, 2, 3]  # k > n: every row, nothing repeated
    assert seeded_subset(0, 5, 3) == []


# ---- task probabilities -------------------------------------------------------------------------------------

def test_task_probabilities_by_hand():
    sizes = {"a": 100, "b": 25, "c": 4}
    prop = task_probabilities(sizes, "proportional", 1.0)
    assert prop == pytest.approx({"a": 100 / 129, "b": 25 / 129, "c": 4 / 129})
    assert task_probabilities(sizes, "uniform", 1.0) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    # T = 2: weights sqrt(n) = 10, 5, 2
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx({"a": 10 / 17, "b": 5 / 17, "c": 2 / 17})
    assert task_probabilities(sizes, "temperature", 1.0) == pytest.approx(prop)
    hot = task_probabilities(sizes, "temperature", 1e6)
    assert hot == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=1e-4)
    medium = task_probabilities(sizes, "temperature", 5.0)
    assert prop["a"] > medium["a"] > hot["a"] and prop["c"] < medium["c"] < hot["c"]
    for p in (prop, hot, medium):
        assert sum(p.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="^unknown task sampling 'sqrt'; "
                                         "choose one of proportional, uniform, temperature$"):
        task_probabilities(sizes, "sqrt", 1.0)


@pytest.mark.parametrize("sampling,temperature", [("uniform", 1.0), ("temperature", 2.0), ("temperature", 1.0)])
def test_sampled_task_frequencies_match_probabilities(sampling, temperature):
    sizes = {"big": 400, "mid": 60, "small": 12}
    sampler = MultiTaskSampler(sizes, 4, seed=11, sampling=sampling, temperature=temperature)
    counts: collections.Counter = collections.Counter()
    epochs = 120
    for epoch in range(epochs):
        plan = sampler.epoch_plan(epoch)
        assert len(plan) == sampler.steps_per_epoch()
        counts.update(t for t, _ in plan)
    total = sum(counts.values())
    assert total == epochs * sampler.steps_per_epoch()
    expected = task_probabilities(sizes, sampling, temperature)
    for task, p in expected.items():
        assert counts[task] / total == pytest.approx(p, abs=0.02), (task, counts)


@pytest.mark.parametrize("sampling", ["uniform", "temperature"])
def test_sampled_batches_cycle_through_reshuffled_passes(sampling):
    sizes = {"big": 90, "small": 10}
    sampler = MultiTaskSampler(sizes, 4, seed=2, sampling=sampling, temperature=3.0)
    plan = [(t, r.tolist()) for t, r in sampler.epoch_plan(0)]
    for task, n in sizes.items():
        batches = [rows for t, rows in plan if t == task]
        per_pass = math.ceil(n / 4)
        full_passes = len(batches) // per_pass
        assert full_passes >= 1 or task == "big"
        for k in range(full_passes):
            rows = [r for b in batches[k * per_pass:(k + 1) * per_pass] for r in b]
            assert sorted(rows) == list(range(n)), (task, k)
        if full_passes >= 2:  # a new pass is a new shuffle
            assert batches[:per_pass] != batches[per_pass:2 * per_pass]
    # every step is one task's batch of valid rows
    for task, rows in plan:
        assert 1 <= len(rows) <= 4 and all(0 <= r < sizes[task] for r in rows)


def test_uniform_oversamples_the_small_task():
    sizes = {"big": 400, "small": 8}
    plan = MultiTaskSampler(sizes, 4, seed=0, sampling="uniform").epoch_plan(0)
    small = sum(1 for t, _ in plan if t == "small")
    assert small > 3 * math.ceil(8 / 4)  # far more than its proportional share of 2 batches


# ---- distributed --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["proportional", "uniform", "temperature"])
def test_two_ranks_split_the_global_batch(sampling):
    kw = dict(seed=7, sampling=sampling, temperature=2.0)
    ranks = [MultiTaskSampler(SIZES, BS // 2, rank=r, world_size=2, **kw) for r in (0, 1)]
    single = MultiTaskSampler(SIZES, BS, **kw)
    assert ranks[0].global_batch == ranks[1].global_batch == single.global_batch == BS
    assert ranks[0].steps_per_epoch() == single.steps_per_epoch()
    for _ in range(2):  # two epochs
        e0, e1, es = _epoch(ranks[0]), _epoch(ranks[1]), _epoch(single)
        assert len(e0) == len(e1) == len(es) == single.steps_per_epoch()
        for (t0, r0), (t1, r1), (ts, rs) in zip(e0, e1, es):
            assert t0 == t1 == ts  # the same task on every rank at every step
            assert not set(r0) & set(r1)
            assert r0 + r1 == rs  # contiguous slices of the single-process global batch
            assert abs(len(r0) - len(r1)) <= 1 and len(r0) <= BS // 2


def test_two_ranks_cover_each_row_once_per_epoch():
    ranks = [MultiTaskSampler(SIZES, 4, seed=0, rank=r, world_size=2) for r in (0, 1)]
    seen = collections.defaultdict(list)
    for sampler in ranks:
        for task, rows in sampler:
            seen[task].extend(rows)
    for task, n in SIZES.items():
        assert sorted(seen[task]) == list(range(n))


def test_last_global_batch_smaller_than_world_size():
    sizes = {"tiny": 9}  # global batch 8: the last one holds a single row
    ranks = [MultiTaskSampler(sizes, 4, seed=0, rank=r, world_size=2) for r in (0, 1)]
    e0, e1 = _epoch(ranks[0]), _epoch(ranks[1])
    assert len(e0) == len(e1) == 2
    last0, last1 = e0[-1][1], e1[-1][1]
    assert len(last0) == len(last1) == 1 and last0 == last1  # rank 1 repeats the row: no rank idles
    assert sorted(e0[0][1] + e1[0][1] + last0) == list(range(9))


def test_world_size_four_rank_slices_partition():
    ranks = [MultiTaskSampler(SIZES, 2, seed=9, rank=r, world_size=4) for r in range(4)]
    epochs = [_epoch(s) for s in ranks]
    single = _epoch(MultiTaskSampler(SIZES, 8, seed=9))
    for step, (task, rows) in enumerate(single):
        parts = [e[step] for e in epochs]
        assert {t for t, _ in parts} == {task}
        if len(rows) >= 4:
            assert [r for _, p in parts for r in p] == rows


# ---- resuming -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["proportional", "temperature"])
def test_state_dict_resumes_mid_epoch(sampling):
    a = MultiTaskSampler(SIZES, BS, seed=21, sampling=sampling, temperature=2.0)
    _epoch(a)  # finish epoch 0 so that the resume happens in epoch 1
    it = iter(a)
    taken = [next(it) for _ in range(5)]
    state = a.state_dict()
    assert state == {"epoch": 1, "position": 5}
    rest = [(t, list(r)) for t, r in it]
    assert len(taken) + len(rest) == a.steps_per_epoch()

    b = MultiTaskSampler(SIZES, BS, seed=21, sampling=sampling, temperature=2.0)
    b.load_state_dict(state)
    assert _epoch(b) == rest
    assert b.state_dict() == a.state_dict() == {"epoch": 2, "position": 0}
    assert _epoch(b) == _epoch(a)  # and the following epoch matches too


def test_state_dict_at_an_epoch_boundary():
    a = MultiTaskSampler(SIZES, BS, seed=1)
    _epoch(a)
    b = MultiTaskSampler(SIZES, BS, seed=1)
    b.load_state_dict(a.state_dict())
    assert _epoch(b) == _epoch(a)


def test_resume_on_a_distributed_rank():
    a = MultiTaskSampler(SIZES, 4, seed=2, rank=1, world_size=2)
    it = iter(a)
    for _ in range(3):
        next(it)
    rest = list(it)
    b = MultiTaskSampler(SIZES, 4, seed=2, rank=1, world_size=2)
    b.load_state_dict({"epoch": 0, "position": 3})
    assert list(b) == rest


# ---- evaluation batches -------------------------------------------------------------------------------------

def test_eval_batches_cover_every_row_sorted_by_length():
    feats = _fake_features(53)
    lengths = feats.lengths()
    batches = list(eval_batches(feats, 8))
    rows = [r for b in batches for r in b]
    assert sorted(rows) == list(range(53))
    assert [lengths[r] for r in rows] == sorted(lengths)
    assert all(1 <= len(b) <= 8 for b in batches) and len(batches) == math.ceil(53 / 8)


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_batches_rank_slices_partition_the_rows(world_size):
    feats = _fake_features(41, seed=1)
    lengths = feats.lengths()
    per_rank = [[r for b in eval_batches(feats, 5, rank=k, world_size=world_size) for r in b]
                for k in range(world_size)]
    everything = [r for rows in per_rank for r in rows]
    assert sorted(everything) == list(range(41))  # disjoint and complete
    for rows in per_rank:
        assert [lengths[r] for r in rows] == sorted(lengths[r] for r in rows)
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


def test_eval_batches_more_ranks_than_rows():
    feats = _fake_features(2)
    assert list(eval_batches(feats, 4, rank=3, world_size=4)) == []
    assert list(eval_batches(feats, 4, rank=1, world_size=4)) == [[1]]


def test_rank_slice_contiguous():
    s = MultiTaskSampler({"x": 10}, 2, seed=0, rank=2, world_size=3)
    assert s.rank_slice(np.arange(7)) == [5, 6]
    assert MultiTaskSampler({"x": 10}, 2, seed=0, rank=0, world_size=3).rank_slice(np.arange(7)) == [0, 1, 2]


@pytest.mark.parametrize("sampling", ["proportional", "uniform", "temperature"])
def test_batches_left_counts_down_the_epochs_plan_to_zero(sampling):
    """What the trainer's accumulation groups read to stop at the epoch's end: the plan's length less the position,
    whatever the sampling (the plan has steps_per_epoch() batches)."""
    sampler = MultiTaskSampler({"a": 10, "b": 3, "c": 7}, batch_size=3, seed=4, sampling=sampling)
    assert len(sampler.epoch_plan(0)) == sampler.steps_per_epoch() == sampler.batches_left() == 4 + 1 + 3
    seen = []
    for _ in sampler:  # the state moves as batches are taken; the rollover comes after the last one
        seen.append(sampler.batches_left())
    assert seen == list(range(7, -1, -1)) and sampler.state.epoch == 1 and sampler.batches_left() == 8
