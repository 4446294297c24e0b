"""Task metrics from scikit-learn and scipy, and the GLUE average."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _finite(x: float) -> float:
    """Correlations of a constant prediction are undefined: report 0 rather than NaN."""
    return float(x) if math.isfinite(float(x)) else 0.0


def compute_metrics(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """``predictions``: class ids (classification) or scores (regression), aligned with ``labels``.

    acc = accuracy; f1 = binary F1 of class 1 (MRPC, QQP); mcc = Matthews correlation (CoLA);
    pearson / spearman = correlations (STS-B).
    """
    # imported here: scikit-learn and scipy.stats take about a second of CPU to import, which a run without
    # scores (--no_eval, predictions on one's own text, --help) does not need
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if len(preds) != len(gold):
        raise ValueError(f"{len(preds)} predictions for {len(gold)} labels")
    out: dict[str, float] = {}
    for name in names:
        if name == "acc":
            out[name] = float(accuracy_score(gold, preds))
        elif name == "f1":
            out[name] = float(f1_score(gold, preds, zero_division=0.0))
        elif name == "mcc":
            # one class in both (a small dev sample): the correlation is undefined, 0 as scikit-learn gives it,
            # without its warning about the confusion matrix's shape
            single = len(np.union1d(gold, preds)) < 2
            out[name] = 0.0 if single else _finite(matthews_corrcoef(gold, preds))
        elif name in ("pearson", "spearman"):
            # a constant side (predictions, or the gold scores of a small dev sample): undefined, reported as 0
            # without scipy's warning
            varies = np.std(preds) > 0 and np.std(gold) > 0
            correlation = pearsonr if name == "pearson" else spearmanr
            out[name] = _finite(correlation(preds, gold)[0]) if varies else 0.0
        else:
            raise ValueError(f"unknown metric {name!r}")
    return out


def task_score(metrics: dict[str, float]) -> float:
    """GLUE's per-task score: the mean of the task's metrics (MRPC acc/F1, STS-B Pearson/Spearman)."""
    return float(np.mean(list(metrics.values())))


def glue_average(per_task: dict[str, dict[str, float]]) -> float:
    """The GLUE average: mean over tasks of each task's score."""
    return float(np.mean([task_score(m) for m in per_task.values()])) if per_task else float("nan")
