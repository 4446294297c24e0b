"""Paired statistics of a campaign at their edges: the task score of a task with more metrics than the paper's
column, ties at exactly the tie margin, best-of rows placed before or among their members, and Holm's correction
for many tests. Expected values are worked out by hand, or by Holm's procedure run as a sequence of rejections."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.rapt.results import Evaluation, RunResult
from experiments.rapt.stats import (adjust, family_line, holm, paired, paired_comparisons, seed_averages,
                                   task_score, verdict)


def _run(task: str, name: str, seed: int, metrics: dict[str, dict[str, float]], primary: float) -> RunResult:
    evaluation = Evaluation(epoch=0, step=1, train_seconds=1.0, metrics=metrics, primary=primary)
    return RunResult(task=task, name=name, seed=seed, folder=Path("/nowhere"), finished=True,
                     evaluations=[evaluation])


def test_a_task_score_is_the_mean_of_the_papers_metrics_only():
    cola = _run("cola", "standard", 1, {"dev": {"mcc": 0.30, "acc": 0.70}}, 0.30)  # CoLA also logs acc
    mnli = _run("mnli", "standard", 1, {"dev_matched": {"acc": 0.80}, "dev_mismatched": {"acc": 0.82}}, 0.81)
    mrpc = _run("mrpc", "standard", 1, {"dev": {"acc": 0.75, "f1": 0.85}}, 0.75)
    assert task_score(cola, "cola") == pytest.approx(30.0)
    assert task_score(mnli, "mnli") == pytest.approx(81.0)
    assert task_score(mrpc, "mrpc") == pytest.approx(80.0)
    runs = {"cola": {1: cola}, "mrpc": {1: mrpc}}
    assert seed_averages(runs, ["cola", "mrpc"], [1]) == pytest.approx([(30.0 + 80.0) / 2])


def test_a_difference_of_exactly_the_tie_margin_is_a_tie():
    c = paired("rte", "a", "b", [1, 2, 3], np.array([0.05, 1.0, 0.0]), np.array([0.0, 0.0, 0.05]))
    assert (c["a_wins"], c["b_wins"]) == (1, 0)  # +0.05 and -0.05 are ties; +1.0 is a win
    same = paired("rte", "a", "b", [1, 2], np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert same["p_value"] is None and same["sd_diff"] == 0.0 and same["mean_diff"] == 2.0  # t undefined


def _by(**rows: dict[int, float]) -> dict:
    return {name: {"rte": {s: _run("rte", name, s, {"dev": {"acc": v}}, v) for s, v in seeds.items()}}
            for name, seeds in rows.items()}


def test_best_of_rows_are_never_compared_with_their_members_wherever_they_stand():
    by = _by(best={1: 0.6, 2: 0.7}, rapt={1: 0.6, 2: 0.7}, standard={1: 0.5, 2: 0.55},
             eta1={1: 0.58, 2: 0.6})
    # the best-of row first, a member after it, another row between the members
    pairs = paired_comparisons(by, ["best", "rapt", "standard", "eta1"], ["rte"], {"best": ["rapt", "eta1"]})
    got = {(c["a"], c["b"]) for c in pairs if c["task"] == "rte"}
    assert got == {("standard", "best"), ("standard", "rapt"), ("eta1", "rapt"), ("eta1", "standard")}
    # the best-of row after its members: still compared with the rows that are not its members
    pairs = paired_comparisons(by, ["rapt", "standard", "best"], ["rte"], {"best": ["rapt"]})
    assert {(c["a"], c["b"]) for c in pairs if c["task"] == "rte"} == {("standard", "rapt"), ("best", "standard")}
    best_std = next(c for c in pairs if (c["a"], c["b"], c["task"]) == ("best", "standard", "rte"))
    assert best_std["mean_diff"] == pytest.approx(np.mean([60.0 - 50.0, 70.0 - 55.0]))


def test_holm_on_a_worked_example():
    # p in increasing order 0.005, 0.01, 0.03, 0.04 (m = 4): times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04, then the
    # running maximum -> 0.02, 0.03, 0.06, 0.06; a test that could not run (None) is kept and not counted
    got = holm([0.01, 0.04, None, 0.03, 0.005])
    assert got[2] is None
    assert [got[i] for i in (0, 1, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == pytest.approx([0.2]) and holm([]) == [] and holm([None]) == [None]


def _rejected_by_holm(p: np.ndarray, alpha: float) -> set[int]:
    """Holm's procedure as a sequence: the k-th smallest p (from 0) is rejected while it is <= alpha / (m - k);
    at the first that is not, it and all larger ones are kept."""
    out = set()
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (len(p) - k):
            break
        out.add(int(i))
    return out


def test_holm_adjusted_p_is_the_smallest_level_at_which_the_procedure_rejects():
    rng = np.random.default_rng(7)
    for _ in range(200):
        m = int(rng.integers(1, 12))
        p = rng.uniform(0, 0.2, m) ** 2  # many small ones, so that rejections happen
        adjusted = np.array(holm(list(p)))
        for alpha in rng.uniform(0, 0.3, 25):
            assert _rejected_by_holm(p, alpha) == {i for i in range(m) if adjusted[i] <= alpha}, (p, alpha)


def test_adjust_and_the_verdicts():
    tests = [{"p_value": 0.01}, {"p_value": None}, {"p_value": 0.02}, {"p_value": 0.5}]
    adjust(tests)
    # three tests with a p: 0.01 x 3 = 0.03, 0.02 x 2 = 0.04, 0.5 x 1
    assert [t["p_holm"] for t in tests] == pytest.approx([0.03, None, 0.04, 0.5]) and tests[1]["p_holm"] is None
    assert {t["family"] for t in tests} == {3}
    assert [verdict(t) for t in tests] == ["beyond seed noise", "-", "beyond seed noise", "within seed noise"]
    assert verdict({"p_value": 0.03, "p_holm": 0.09}) == "lead (not after Holm)"
    assert verdict({"p_value": 0.05, "p_holm": 0.05}) == "within seed noise"  # both bounds strict


def test_the_family_sentence_counts_before_and_after_the_correction():
    tests = [{"p_value": 0.001}, {"p_value": 0.03}, {"p_value": None}, {"p_value": 0.4}, {"p_value": 0.8}]
    adjust(tests)  # 0.001 x 4 = 0.004 stays below 0.05; 0.03 x 3 = 0.09 does not
    assert family_line(tests) == ("Of these 4 tests, 2 are below 0.05, where about 0.2 would be by chance alone if "
                                  "no method differed; 1 stays below it after the Holm correction.")
    one = [{"p_value": 0.04}, {"p_value": 0.5}]
    adjust(one)
    assert family_line(one) == ("Of these 2 tests, 1 is below 0.05, where about 0.1 would be by chance alone if no "
                                "method differed; 0 stay below it after the Holm correction.")
