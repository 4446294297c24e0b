"""The paper's Table 2 (BERT-base dev rows, mean of 5 seeds) and its columns: task order, labels, metrics."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.rapt.results import Evaluation

TASK_ORDER = ["mnli", "qqp", "rte", "qnli", "mrpc", "cola", "sst", "stsb"]
TASK_LABEL = {"mnli": "MNLI-m/mm", "qqp": "QQP", "rte": "RTE", "qnli": "QNLI", "mrpc": "MRPC", "cola": "CoLA",
              "sst": "SST", "stsb": "STS-B", "wnli": "WNLI"}
# the metrics the paper reports per task (our cola also computes acc; the paper shows only MCC)
PAPER_METRICS = {"mnli": ["acc"], "qqp": ["acc", "f1"], "rte": ["acc"], "qnli": ["acc"], "mrpc": ["acc", "f1"],
                 "cola": ["mcc"], "sst": ["acc"], "stsb": ["pearson", "spearman"], "wnli": ["acc"]}
METRIC_LABEL = {"acc": "Acc", "f1": "F1", "mcc": "MCC", "pearson": "P", "spearman": "S"}
# values per task in the column's order (mnli: matched, mismatched); "average" = the paper's Average column,
# which is the mean of all 12 numbers of the row (checked in the tests)
PAPER_DEV: dict[str, dict[str, Any]] = {
    "Standard": {"mnli": [84.1, 84.3], "qqp": [90.5, 87.3], "rte": [69.3], "qnli": [90.9], "mrpc": [86.9, 90.7],
                 "cola": [58.3], "sst": [92.4], "stsb": [89.9, 89.4], "average": 84.5},
    "SMART": {"mnli": [84.7, 85.2], "qqp": [90.9, 87.9], "rte": [70.8], "qnli": [91.4], "mrpc": [86.4, 90.5],
              "cola": [58.6], "sst": [92.8], "stsb": [90.2, 89.7], "average": 84.9},
    "RAPT (Embedding)": {"mnli": [85.2, 85.5], "qqp": [91.2, 88.3], "rte": [69.5], "qnli": [91.7],
                         "mrpc": [86.1, 90.1], "cola": [58.3], "sst": [92.9], "stsb": [90.1, 89.8], "average": 84.9},
    "RAPT (η=2)": {"mnli": [85.2, 85.5], "qqp": [91.2, 88.2], "rte": [70.6], "qnli": [91.8], "mrpc": [86.9, 90.8],
                   "cola": [58.7], "sst": [92.8], "stsb": [89.9, 89.6], "average": 85.1},
    "RAPT (BEST η)": {"mnli": [85.3, 85.6], "qqp": [91.2, 88.2], "rte": [70.6], "qnli": [91.8],
                      "mrpc": [86.9, 90.8], "cola": [58.7], "sst": [92.8], "stsb": [90.1, 89.7], "average": 85.1},
}


def cell_keys(task: str, evaluation: Evaluation) -> list[tuple[str, str]]:
    """(split name, metric) pairs of a task's column, in the paper's order."""
    out = []
    for split, metrics in evaluation.metrics.items():
        wanted = PAPER_METRICS.get(task) or list(metrics)
        out += [(split, m) for m in wanted if m in metrics]
    return out


def task_order(tasks: set[str]) -> list[str]:
    return [t for t in TASK_ORDER if t in tasks] + sorted(tasks - set(TASK_ORDER))
