"""A campaign's run folders as results: their metrics records, whether they finished, their dev evaluations."""
from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_utils.task_def import ConfigError, load_task_defs

logger = logging.getLogger(__name__)


def numbered_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of each JSON object line of a metrics file; a torn last line (a kill mid-write) or
    any other line that is not a JSON object is skipped with a warning."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                out.append((number, record))
            else:
                logger.warning("%s: skipping an unreadable line", path)
    return out


def read_records(path: Path) -> list[dict]:
    """The JSON object lines of a metrics file (:func:`numbered_records` without the line numbers)."""
    return [r for _, r in numbered_records(path)]


DEV_KEYS = ("epoch", "step", "train_seconds", "metrics")
CLOCKS = ("steps", "steps+eval")  # what a run's train_seconds counts (RunResult.clock)


def check_dev_record(path: Path, line: int, record: dict, primary: str) -> None:
    """A dev record as mt_dnn.train writes it: integer epoch and step, a number train_seconds, and metrics
    holding the task's primary metric; anything else is a one-line :class:`ConfigError` naming file and line."""
    for key in DEV_KEYS:
        if key not in record:
            raise ConfigError(f"{path}:{line}: a dev record without {key!r}: not as mt_dnn.train writes it; "
                              f"restore the file or move the run folder out of the campaign")
    metrics = record["metrics"]
    numbers = [record["epoch"], record["step"], record["train_seconds"],
               *(metrics.values() if isinstance(metrics, dict) else [None])]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        raise ConfigError(f"{path}:{line}: a dev record whose epoch, step, train_seconds or metrics are not "
                          f"numbers: not as mt_dnn.train writes it")
    if primary not in metrics:
        raise ConfigError(f"{path}:{line}: a dev record without the task's primary metric {primary!r} "
                          f"(it has {', '.join(metrics) or 'none'})")


def done_steps(folder: Path) -> int:
    """Steps a started run has already done (its last record's step: the trainer truncates to its checkpoint)."""
    records = read_records(folder / "metrics.jsonl")
    return int(records[-1].get("step", 0)) if records else 0


@dataclass
class Evaluation:
    """One dev evaluation of a run (all its dev splits at one step)."""

    epoch: int
    step: int
    train_seconds: float
    metrics: dict[str, dict[str, float]]  # split name -> metric -> value
    primary: float  # mean over the splits of the task's primary metric
    # split name -> robustness set -> metric -> value, logged at this evaluation (never used to choose it)
    robustness: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


@dataclass
class RunResult:
    task: str
    name: str
    seed: int
    folder: Path
    finished: bool
    evaluations: list[Evaluation]
    train_seconds: float | None = None  # the final train record's (training steps only), when finished
    steps: int | None = None
    metric: str = "score"  # the task's primary metric: what Evaluation.primary is
    config: dict | None = None  # an archived run's recorded settings (a run folder has its config.json)
    device: str = "?"  # what it trained on (run_device); "?" when its records do not say
    # the final train record's train_cpu_seconds (this process's CPU time in the training steps), when recorded
    train_cpu_seconds: float | None = None
    # whether ``evaluations`` holds every dev evaluation of the run (an archive entry without its evaluations
    # holds only its best)
    history: bool = True
    # an archived run's best dev evaluation as its entry gives it (its evaluations, rounded, may tie where the
    # run's own scores did not); None: chosen from ``evaluations``
    chosen: Evaluation | None = None
    # what train_seconds counts: "steps" (training steps only, as mt_dnn.train and the peer time a run) or
    # "steps+eval" (its evaluations too: an archive entry says so for runs whose tool timed them with the steps)
    clock: str = "steps"

    def settings(self) -> dict:
        """The run's config.json (``method``, ``method_options``, ...), or what its archive entry recorded."""
        if self.config is not None:
            return self.config
        return json.loads((self.folder / "config.json").read_text())

    @property
    def best(self) -> Evaluation | None:
        """The evaluation with the highest primary metric (the earliest on ties), or an archived run's recorded one."""
        if self.chosen is not None:
            return self.chosen
        best = None
        for e in self.evaluations:
            if best is None or e.primary > best.primary:
                best = e
        return best


@functools.lru_cache(maxsize=1)
def task_defs() -> dict:
    return load_task_defs()


def primary_metric(task: str, records: list[dict]) -> str:
    defs = task_defs()
    if task in defs:
        return defs[task].primary_metric
    first = records[0].get("metrics")
    return next(iter(first)) if isinstance(first, dict) and first else "score"


def evaluations_of(dev: list[dict], primary: str) -> list[Evaluation]:
    """A run's dev records (of one task) grouped by (epoch, step), in file order; scored by ``primary``."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in dev:
        groups.setdefault((int(r["epoch"]), int(r["step"])), []).append(r)
    out = []
    for (epoch, step), recs in groups.items():
        metrics = {str(r.get("split_name", "dev")): {k: float(v) for k, v in r["metrics"].items()} for r in recs}
        score = float(np.mean([m[primary] for m in metrics.values()]))
        robust = {str(r.get("split_name", "dev")): {s: {k: float(v) for k, v in m.items()}
                                                      for s, m in r["robustness"].items()}
                  for r in recs if isinstance(r.get("robustness"), dict)}
        out.append(Evaluation(epoch, step, max(float(r["train_seconds"]) for r in recs), metrics, score, robust))
    return out


def run_device(config: dict) -> str:
    """What a run trained on, from its config.json: ``resolved_device`` (``cpu``, ``cuda (<GPU name>)``, ...); for
    folders written before that was recorded, ``--device`` when it named one, else ``cpu`` under a CPU-only build
    of torch; ``?`` when the records do not tell."""
    if config.get("resolved_device"):
        return str(config["resolved_device"])
    device = str(config.get("device") or "auto")
    if device != "auto":
        return device.split(":")[0]
    return "cpu" if str(config.get("torch", "")).endswith("+cpu") else "?"


def load_result(folder: Path, task: str | None = None, name: str | None = None) -> RunResult | None:
    """A run folder's results (task, method name and seed from flags.json, else from the path and records)."""
    numbered = numbered_records(folder / "metrics.jsonl")
    records = [r for _, r in numbered]
    if not records:
        return None
    info = {}
    if (folder / "flags.json").is_file():
        info = json.loads((folder / "flags.json").read_text())
    task = info.get("task") or task or folder.parent.parent.name
    name = info.get("method_name") or name or folder.parent.name
    seed = info.get("seed")
    if seed is None:
        m = re.match(r"s(\d+)", folder.name)
        seed = int(m.group(1)) if m else int(records[0].get("seed", 0))
    last = records[-1]
    done = last.get("split") == "train"
    dev = [(n, r) for n, r in numbered if r.get("split") == "dev" and r.get("task") == task]
    metric = primary_metric(task, [r for _, r in dev]) if dev else "score"
    for n, r in dev:
        check_dev_record(folder / "metrics.jsonl", n, r, metric)
    config = folder / "config.json"
    device = run_device(json.loads(config.read_text())) if config.is_file() else "?"
    return RunResult(task, name, int(seed), folder, done, evaluations_of([r for _, r in dev], metric),
                     float(last["train_seconds"]) if done and "train_seconds" in last else None,
                     int(last["steps"]) if done and "steps" in last else None, metric, device=device,
                     train_cpu_seconds=float(last["train_cpu_seconds"]) if done and "train_cpu_seconds" in last
                     else None)


def scan_results(root: Path) -> list[RunResult]:
    """Every run under ``ROOT/<task>/<method name>/s<seed>*``; of several folders for one (task, method, seed),
    the newest wins (an older folder is a run with other hyperparameters)."""
    chosen: dict[tuple[str, str, int], RunResult] = {}
    for metrics in sorted(root.glob("*/*/s*/metrics.jsonl")):
        if metrics.parts[-4].startswith("."):
            continue
        res = load_result(metrics.parent)
        if res is None:
            continue
        key = (res.task, res.name, res.seed)
        if key in chosen:
            old = chosen[key]
            newer = res if metrics.stat().st_mtime >= (old.folder / "metrics.jsonl").stat().st_mtime else old
            logger.warning("%s/%s seed %d: several run folders (%s, %s); using %s", res.task, res.name, res.seed,
                           old.folder.name, res.folder.name, newer.folder.name)
            res = newer
        chosen[key] = res
    return list(chosen.values())
