"""Archived results: best dev evaluations of runs whose folders are gone, read from a JSON file, for the report.

The file (e.g. ``experiments/rapt/results/archive_table2.json``)::

    {"source": "where these numbers come from",
     "runs": [{"task": "rte", "method": "standard", "seed": 1, "epoch": 1, "metrics": {"acc": 0.549},
               "train_seconds": 942.0, "steps": 234}, ...]}

Each entry becomes a finished ``RunResult`` with one evaluation (its best). A run folder under the campaign root
always wins over an archived entry of the same (task, method, seed), so re-running a cell replaces its archive.
``epoch`` may be null where the source did not say (kept as -1: reports show ``ep ?``); an optional ``config``
(``{"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 5}}``) stands for the run's config.json,
for readers that need the settings (the layer sweep). A task with several dev splits (MNLI) gives its metrics per
split, named as its run folders name them: ``"metrics": {"dev_matched": {"acc": 0.84}, "dev_mismatched": {...}}``
(the primary metric is then their mean, as for a run folder).
"""
from __future__ import annotations

import json
from pathlib import Path

from data_utils.task_def import ConfigError
from experiments.rapt.results import Evaluation, RunResult, task_defs

REQUIRED = ("task", "method", "seed", "epoch", "metrics")


def _splits(metrics: dict) -> dict[str, dict[str, float]]:
    """{metric: value} (one split, "dev") or {split: {metric: value}} -> {split: {metric: float}}."""
    if metrics and all(isinstance(v, dict) for v in metrics.values()):
        return {str(split): {str(k): float(v) for k, v in m.items()} for split, m in metrics.items()}
    return {"dev": {str(k): float(v) for k, v in metrics.items()}}


def load_archive(path: str | Path) -> list[RunResult]:
    """The archived runs of ``path`` as finished results; a malformed file or entry is a one-line ConfigError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the archive ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ConfigError(f"{path}: expected an object with a 'runs' list")
    defs = task_defs()
    out: list[RunResult] = []
    seen: set[tuple[str, str, int]] = set()
    for i, entry in enumerate(data["runs"]):
        where = f"{path}: runs[{i}]"
        if not isinstance(entry, dict) or any(k not in entry for k in REQUIRED):
            raise ConfigError(f"{where}: needs {', '.join(REQUIRED)}")
        task, name, seed = str(entry["task"]), str(entry["method"]), int(entry["seed"])
        if task not in defs:
            raise ConfigError(f"{where}: unknown task {task!r}")
        primary = defs[task].primary_metric
        try:
            splits = _splits(entry["metrics"])
        except (AttributeError, TypeError, ValueError):
            raise ConfigError(f"{where}: metrics must be {{metric: number}} or {{split: {{metric: number}}}}") from None
        if any(primary not in metrics for metrics in splits.values()):
            raise ConfigError(f"{where}: metrics lack {task}'s primary metric {primary!r}")
        if (task, name, seed) in seen:
            raise ConfigError(f"{where}: {task}/{name} seed {seed} is archived twice")
        seen.add((task, name, seed))
        steps = int(entry["steps"]) if entry.get("steps") is not None else None
        seconds = float(entry["train_seconds"]) if entry.get("train_seconds") is not None else None
        epoch = -1 if entry["epoch"] is None else int(entry["epoch"])
        config = entry.get("config")
        if config is not None and not isinstance(config, dict):
            raise ConfigError(f"{where}: config must be an object (the run's config.json settings)")
        score = sum(m[primary] for m in splits.values()) / len(splits)
        ev = Evaluation(epoch, steps or 0, seconds or 0.0, splits, score)
        out.append(RunResult(task, name, seed, path, True, [ev], seconds, steps, primary, config))
    return out


def with_archive(results: list[RunResult], archived: list[RunResult]) -> list[RunResult]:
    """``results`` plus the archived runs whose (task, method, seed) no run folder covers."""
    have = {(r.task, r.name, r.seed) for r in results if r.finished}
    return results + [a for a in archived if (a.task, a.name, a.seed) not in have]
