"""Tests of data_utils.metrics against values worked out by hand."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from data_utils.metrics import compute_metrics, glue_average, task_score

# A binary confusion matrix written out:   gold: 1 1 1 1 0 0 0 0 1 0
#                                          pred: 1 1 1 0 0 0 1 0 1 1
GOLD = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
PRED = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
TP, FN, FP, TN = 4, 1, 2, 3  # positions 0,1,2,8 | 3 | 6,9 | 4,5,7


def test_acc_f1_mcc_by_hand():
    m = compute_metrics(["acc", "f1", "mcc"], PRED, GOLD)
    assert m["acc"] == pytest.approx((TP + TN) / len(GOLD))  # 0.7
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall))  # 8 / 11
    assert m["f1"] == pytest.approx(2 * TP / (2 * TP + FP + FN))
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert m["mcc"] == pytest.approx(mcc)  # 10 / sqrt(600)
    assert m["mcc"] == pytest.approx(10 / math.sqrt(600))
    assert list(m) == ["acc", "f1", "mcc"] and all(type(v) is float for v in m.values())


def test_perfect_and_inverted_predictions():
    inverted = [1 - g for g in GOLD]
    assert compute_metrics(["acc", "f1", "mcc"], GOLD, GOLD) == {"acc": 1.0, "f1": 1.0, "mcc": 1.0}
    m = compute_metrics(["acc", "f1", "mcc"], inverted, GOLD)
    assert m["acc"] == 0.0 and m["f1"] == 0.0 and m["mcc"] == pytest.approx(-1.0)


def test_multiclass_accuracy():
    gold = [0, 1, 2, 2, 1, 0]
    pred = [0, 2, 2, 2, 1, 1]
    assert compute_metrics(["acc"], pred, gold)["acc"] == pytest.approx(4 / 6)
    assert compute_metrics(["acc"], np.array(pred), np.array(gold))["acc"] == pytest.approx(4 / 6)


def test_pearson_and_spearman_by_hand():
    pred = [1.0, 2.0, 3.0, 4.0, 5.0]
    gold = [2.0, 4.0, 5.0, 4.0, 5.0]
    # Pearson: deviations from the means (3 and 4): dx = -2 -1 0 1 2, dy = -2 0 1 0 1
    # sum dx*dy = 4 + 0 + 0 + 0 + 2 = 6, sum dx^2 = 10, sum dy^2 = 6
    pearson = 6 / math.sqrt(10 * 6)
    # Spearman: ranks of gold with ties averaged: 2 -> 1, 4 4 -> 2.5 2.5, 5 5 -> 4.5 4.5
    # rank deviations from 3: -2 -0.5 1.5 -0.5 1.5; sum dx*dy = 4 + 0.5 + 0 - 0.5 + 3 = 7; sum dy^2 = 9
    spearman = 7 / math.sqrt(10 * 9)
    m = compute_metrics(["pearson", "spearman"], pred, gold)
    assert m["pearson"] == pytest.approx(pearson)
    assert m["spearman"] == pytest.approx(spearman)


def test_spearman_is_rank_based():
    pred = [1.0, 2.0, 3.0, 4.0]
    gold = [1.0, 10.0, 100.0, 1000.0]  # monotone but far from linear
    m = compute_metrics(["pearson", "spearman"], pred, gold)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] < 0.99


def test_constant_predictions_give_zero_not_nan():
    gold = [0.5, 1.5, 2.5, 4.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning / RuntimeWarning may leak either
        m = compute_metrics(["pearson", "spearman"], [2.0] * 4, gold)
    assert m == {"pearson": 0.0, "spearman": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = compute_metrics(["pearson", "spearman"], [0.1, 0.2, 0.3, 0.4], [3.0] * 4)  # constant gold
    assert m == {"pearson": 0.0, "spearman": 0.0}
    m = compute_metrics(["mcc", "f1", "acc"], [1] * len(GOLD), GOLD)  # always the positive class
    assert m["mcc"] == 0.0 and not math.isnan(m["mcc"])
    assert m["acc"] == pytest.approx(5 / 10)
    assert m["f1"] == pytest.approx(2 * 5 / (2 * 5 + 5 + 0))
    m = compute_metrics(["mcc", "f1"], [0] * len(GOLD), GOLD)  # never the positive class
    assert m == {"mcc": 0.0, "f1": 0.0}


def test_f1_without_any_positive_row_is_zero_without_a_warning():
    # F1 of class 1 = 2TP / (2TP + FP + FN) is 0/0 when neither the predictions nor the labels hold class 1: 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's UndefinedMetricWarning may not leak
        assert compute_metrics(["f1"], [0, 0, 0], [0, 0, 0]) == {"f1": 0.0}


def test_correlations_of_predictions_with_a_small_spread():
    # predictions 0.1 0.2 0.3 (std 0.08, far below 1) against 1 2 4: dx = -0.1 0 0.1, dy = -4/3 -1/3 5/3
    # sum dx*dy = 0.3, sum dx^2 = 0.02, sum dy^2 = 42/9 -> r = 0.3 / sqrt(0.02 * 42 / 9); same ranks: Spearman 1
    m = compute_metrics(["pearson", "spearman"], [0.1, 0.2, 0.3], [1.0, 2.0, 4.0])
    assert m["pearson"] == pytest.approx(0.3 / math.sqrt(0.02 * 42 / 9))
    assert m["spearman"] == pytest.approx(1.0)


def test_bad_calls():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(["acc"], [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="auc"):
        compute_metrics(["auc"], [0, 1], [0, 1])


def test_task_score_is_the_mean_of_the_task_metrics():
    assert task_score({"acc": 0.8, "f1": 0.9}) == pytest.approx(0.85)
    assert task_score({"pearson": 0.7, "spearman": 0.5}) == pytest.approx(0.6)
    assert task_score({"mcc": 0.42}) == pytest.approx(0.42)


def test_glue_average():
    per_task = {"mrpc": {"acc": 0.8, "f1": 0.9}, "stsb": {"pearson": 0.7, "spearman": 0.5},
                "rte": {"acc": 0.6}, "cola": {"mcc": 0.3}}
    assert glue_average(per_task) == pytest.approx((0.85 + 0.6 + 0.6 + 0.3) / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warning: no task is nan, said plainly
        assert math.isnan(glue_average({}))


def test_metrics_of_a_task_feed_the_average():
    mrpc = compute_metrics(["acc", "f1"], PRED, GOLD)
    stsb = compute_metrics(["pearson", "spearman"], [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 5.0, 4.0, 5.0])
    expected = ((0.7 + 8 / 11) / 2 + (6 / math.sqrt(60) + 7 / math.sqrt(90)) / 2) / 2
    assert glue_average({"mrpc": mrpc, "stsb": stsb}) == pytest.approx(expected)
