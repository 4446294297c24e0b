"""Archived results: the dev evaluations of runs whose folders are gone, read from a JSON file, for the report.

The file (e.g. ``experiments/rapt/results/archive_table2.json``)::

    {"source": "where these numbers come from",
     "runs": [{"task": "rte", "method": "standard", "seed": 1, "epoch": 1, "metrics": {"acc": 0.549},
               "train_seconds": 942.0, "train_cpu_seconds": 930.5, "steps": 234}, ...]}

Each entry becomes a finished ``RunResult`` whose best evaluation is the entry's. An optional ``evaluations`` list
holds every dev evaluation of the run (``{"epoch": 0, "step": 78, "metrics": {...}, "robustness": {...}}``, in
order; the entry's best among them, none above it), so per-epoch readers (the robustness report's by-epoch
tables) keep working once the folder is gone; without it the run holds its best evaluation only. A run folder under the campaign root
always wins over an archived entry of the same (task, method, seed), so re-running a cell replaces its archive.
``epoch`` may be null where the source did not say (kept as -1: reports show ``ep ?``); an optional ``config``
(``{"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 5}}``) stands for the run's config.json,
for readers that need the settings (the layer sweep). A task with several dev splits (MNLI) gives its metrics per
split, named as its run folders name them: ``"metrics": {"dev_matched": {"acc": 0.84}, "dev_mismatched": {...}}``
(the primary metric is then their mean, as for a run folder). ``device`` (``cpu``, ``cuda (NVIDIA H200)``) says
what a run trained on, so the report compares its clock only with runs on the same device; a top-level
``device`` is the default for entries that name none, and without either it is ``?``. ``train_cpu_seconds``
(optional) is the training process's CPU time in its steps, as its train record gave it. ``clock`` (optional,
``steps`` when absent) says what ``train_seconds`` counts: ``steps+eval`` for a run whose tool timed its
evaluations with its training steps; the report compares such clocks only with their own kind.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from data_utils import atomic
from data_utils.task_def import ConfigError
from experiments.rapt.results import CLOCKS, Evaluation, RunResult, task_defs

REQUIRED = ("task", "method", "seed", "epoch", "metrics")


def _splits(metrics: dict) -> dict[str, dict[str, float]]:
    """{metric: value} (one split, "dev") or {split: {metric: value}} -> {split: {metric: float}}."""
    if metrics and all(isinstance(v, dict) for v in metrics.values()):
        return {str(split): {str(k): float(v) for k, v in m.items()} for split, m in metrics.items()}
    return {"dev": {str(k): float(v) for k, v in metrics.items()}}


def _number(entry: dict, key: str, kind: type, where: str, optional: bool = False) -> int | float | None:
    """``entry[key]`` as ``kind`` (int: a whole number); None where it is optional and missing or null; anything
    else is a one-line ConfigError naming the entry and the key."""
    value = entry.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (kind is int and value != int(value)):
        raise ConfigError(f"{where}: {key} must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def _evaluation(entry: dict, where: str, task: str, primary: str, step: int, seconds: float) -> Evaluation:
    """One evaluation of an archive entry (the entry itself: its best; or an item of its ``evaluations``):
    ``epoch`` (null: -1), ``metrics`` per split, ``robustness`` per split and set, optional ``step``."""
    try:
        splits = _splits(entry["metrics"])
    except (AttributeError, TypeError, ValueError):
        raise ConfigError(f"{where}: metrics must be {{metric: number}} or {{split: {{metric: number}}}}") from None
    if any(primary not in metrics for metrics in splits.values()):
        raise ConfigError(f"{where}: metrics lack {task}'s primary metric {primary!r}")
    epoch = -1 if entry["epoch"] is None else _number(entry, "epoch", int, where)
    step = _number(entry, "step", int, where, optional=True) or step
    robust = entry.get("robustness") or {}
    try:  # {set: {metric: number}} (one dev split) or {split: {set: {metric: number}}}
        if robust and all(isinstance(v, dict) and all(isinstance(x, dict) for x in v.values())
                          for v in robust.values()) and set(robust) <= set(splits):
            robust = {str(sp): {str(n): {str(k): float(v) for k, v in m.items()} for n, m in sets.items()}
                      for sp, sets in robust.items()}
        elif robust:
            robust = {next(iter(splits)): {str(n): {str(k): float(v) for k, v in m.items()}
                                           for n, m in robust.items()}}
    except (AttributeError, TypeError, ValueError):
        raise ConfigError(f"{where}: robustness must be {{set: {{metric: number}}}} or "
                          f"{{split: {{set: {{metric: number}}}}}}") from None
    lacking = sorted(n for sets in robust.values() for n, m in sets.items() if primary not in m)
    if lacking:
        raise ConfigError(f"{where}: robustness set {lacking[0]} lacks {task}'s primary metric {primary!r}")
    score = sum(m[primary] for m in splits.values()) / len(splits)
    return Evaluation(epoch, step, seconds, splits, score, robust)


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
    default_device = str(data.get("device", "?"))
    out: list[RunResult] = []
    seen: set[tuple[str, str, int]] = set()
    for i, entry in enumerate(data["runs"]):
        where = f"{path}: runs[{i}]"
        if not isinstance(entry, dict) or any(k not in entry for k in REQUIRED):
            raise ConfigError(f"{where}: needs {', '.join(REQUIRED)}")
        task, name = str(entry["task"]), str(entry["method"])
        seed = _number(entry, "seed", int, where)
        if task not in defs:
            raise ConfigError(f"{where}: unknown task {task!r}")
        primary = defs[task].primary_metric
        if (task, name, seed) in seen:
            raise ConfigError(f"{where}: {task}/{name} seed {seed} is archived twice")
        seen.add((task, name, seed))
        steps = _number(entry, "steps", int, where, optional=True)
        seconds = _number(entry, "train_seconds", float, where, optional=True)
        cpu = _number(entry, "train_cpu_seconds", float, where, optional=True)
        clock = entry.get("clock", "steps")
        if clock not in CLOCKS:
            raise ConfigError(f"{where}: clock {clock!r}; choose one of {', '.join(CLOCKS)}")
        config = entry.get("config")
        if config is not None and not isinstance(config, dict):
            raise ConfigError(f"{where}: config must be an object (the run's config.json settings)")
        best = _evaluation(entry, where, task, primary, steps or 0, seconds or 0.0)
        history = entry.get("evaluations")
        if history is None:
            evaluations = [best]
        elif not isinstance(history, list) or not history:
            raise ConfigError(f"{where}: evaluations must be a list of the run's dev evaluations")
        else:
            evaluations = []
            for j, item in enumerate(history):
                if not isinstance(item, dict) or any(k not in item for k in ("epoch", "metrics")):
                    raise ConfigError(f"{where}: evaluations[{j}] needs epoch, metrics")
                evaluations.append(_evaluation(item, f"{where}: evaluations[{j}]", task, primary, 0, 0.0))
            same = [e for e in evaluations if e.epoch == best.epoch]
            if len(same) != 1 or (same[0].metrics, same[0].robustness) != (best.metrics, best.robustness):
                raise ConfigError(f"{where}: evaluations hold no one evaluation of epoch {best.epoch} with the entry's "
                                  "metrics and robustness")
            if any(e.primary > best.primary for e in evaluations):
                raise ConfigError(f"{where}: evaluations score above the entry's best dev evaluation (epoch "
                                  f"{best.epoch})")
        out.append(RunResult(task, name, seed, path, True, evaluations, seconds, steps, primary, config,
                             device=str(entry.get("device", default_device)), train_cpu_seconds=cpu,
                             history=history is not None, chosen=best, clock=clock))
    return out


def load_archives(paths: list[str | Path]) -> list[RunResult]:
    """The runs of several archives together (a study's CPU cells in one file, its GPU cells in another); a
    (task, method, seed) archived in two of them is a one-line ConfigError naming both files."""
    out: list[RunResult] = []
    first: dict[tuple[str, str, int], str | Path] = {}
    for path in paths:
        for run in load_archive(path):
            key = (run.task, run.name, run.seed)
            if key in first:
                raise ConfigError(f"{path}: {run.task}/{run.name} seed {run.seed} is archived in {first[key]} too")
            first[key] = path
            out.append(run)
    return out


def with_archive(results: list[RunResult], archived: list[RunResult]) -> list[RunResult]:
    """``results`` plus the archived runs whose (task, method, seed) no run folder covers."""
    have = {(r.task, r.name, r.seed) for r in results if r.finished}
    return results + [a for a in archived if (a.task, a.name, a.seed) not in have]


def _scores(evaluation: Evaluation) -> dict:
    """An evaluation's metrics (to 4 decimals; per split where the task has several) and its robustness sets'."""
    splits = {split: {k: round(v, 4) for k, v in m.items()} for split, m in evaluation.metrics.items()}
    robust = {split: {n: {k: round(v, 4) for k, v in m.items()} for n, m in sets.items()}
              for split, sets in evaluation.robustness.items()}
    out = {"metrics": splits["dev"] if list(splits) == ["dev"] else splits}
    if robust:
        out["robustness"] = robust["dev"] if list(robust) == ["dev"] else robust
    return out


def archive_entry(result: RunResult) -> dict:
    """A finished run folder as an archive entry: its best dev evaluation (metrics to 4 decimals; per split where
    the task has several) with the robustness sets' scores at it, that evaluation's epoch, the run's training
    seconds and steps, what it trained on, its method settings (``config``), and every dev evaluation of the run
    (``evaluations``: epoch, step, metrics, robustness), so the per-epoch picture outlives the folder."""
    best = result.best
    if not result.finished or best is None:
        raise ConfigError(f"{result.folder}: not a finished run with a dev evaluation")
    settings = result.settings()
    return {"task": result.task, "method": result.name, "seed": result.seed, "epoch": best.epoch,
            **_scores(best),
            "train_seconds": round(result.train_seconds, 1) if result.train_seconds else None,
            "steps": result.steps, "device": result.device,
            **({"train_cpu_seconds": round(result.train_cpu_seconds, 1)} if result.train_cpu_seconds else {}),
            **({"clock": result.clock} if result.clock != "steps" else {}),
            "config": {"method": settings.get("method"), "method_options": settings.get("method_options", {})},
            **({"evaluations": [{"epoch": e.epoch, "step": e.step, **_scores(e)} for e in result.evaluations]}
               if result.history else {})}


def _write(path: Path, data: dict) -> None:
    """The archive with one run per line (diffs stay readable), written whole or not at all."""
    head = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in data.items() if k != "runs")
    runs = ",\n".join("  " + json.dumps(r) for r in data["runs"])
    atomic.write_text(path, "{\n" + head + ' "runs": [\n' + runs + "\n ]\n}\n")


def add_runs(path: str | Path, folders: list[str], source: str | None = None, replace: bool = False,
             new_only: bool = False, clock: str = "steps") -> list[str]:
    """Add finished run folders (``ROOT/<task>/<method name>/s<seed>-<hash>``) to the archive ``path`` (made if
    missing, which needs ``source``). A (task, method, seed) already archived is an error unless ``replace``; with
    ``new_only`` the folders not finished yet and the runs archived already are skipped instead (one line each), so
    the command can be repeated while a campaign runs. ``clock``: what the folders' ``train_seconds`` count
    (``steps+eval`` for runs whose tool timed their evaluations with the steps). Every folder is checked before
    the file changes. Returns one line per run."""
    if clock not in CLOCKS:
        raise ConfigError(f"--clock {clock!r}; choose one of {', '.join(CLOCKS)}")
    from experiments.rapt.results import load_result

    path = Path(path)
    if path.exists():
        load_archive(path)  # a malformed archive stops here, before anything is added to it
        data = json.loads(path.read_text())
    elif source:
        data = {"source": source, "runs": []}
    else:
        raise ConfigError(f"{path}: no such archive; give --source to start one")
    index = {(r["task"], r["method"], int(r["seed"])): i for i, r in enumerate(data["runs"])}
    entries, lines = [], []
    for folder in map(Path, folders):
        result = load_result(folder)
        if result is None:
            if new_only:
                lines.append(f"skipped {folder}: no records yet")
                continue
            raise ConfigError(f"{folder}: no metrics.jsonl records (not a run folder)")
        if new_only and (not result.finished or (result.task, result.name, result.seed) in index):
            lines.append(f"skipped {folder}: {'archived already' if result.finished else 'not finished'}")
            continue
        result.clock = clock
        entries.append(archive_entry(result))
    keys = [(e["task"], e["method"], e["seed"]) for e in entries]
    if len(set(keys)) < len(keys):
        raise ConfigError("two of the folders are the same (task, method, seed)")
    for key, entry in zip(keys, entries):
        if key in index and not replace:
            raise ConfigError(f"{path}: {key[0]}/{key[1]} seed {key[2]} is archived already (--replace replaces it, "
                              "--new skips it)")
        if key in index:
            data["runs"][index[key]] = entry
        else:
            data["runs"].append(entry)
        lines.append(f"{'replaced' if key in index else 'added'} {key[0]}/{key[1]} seed {key[2]}: epoch "
                     f"{entry['epoch']} {entry['metrics']} on {entry['device']}")
    if entries:
        _write(path, data)
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.rapt.archive",
                                description="Add finished run folders to an archive of best dev evaluations, so "
                                            "reports (campaign --report --archive, layers --archive) keep them "
                                            "once the folders are gone.")
    p.add_argument("archive", help="archive JSON file")
    p.add_argument("runs", nargs="+", help="finished run folders (with --new, any run folders)")
    p.add_argument("--source", help="where the numbers come from (required for a new archive)")
    p.add_argument("--replace", action="store_true", help="replace runs that are archived already")
    p.add_argument("--new", action="store_true",
                   help="add only the finished runs not archived yet, skipping the rest (to repeat while a "
                        "campaign runs: ROOT/*/*/s*)")
    p.add_argument("--clock", choices=CLOCKS, default="steps",
                   help="what the runs' train_seconds count: steps (training steps only, as mt_dnn.train and the "
                        "peer time a run) or steps+eval (runs whose tool timed their evaluations too); the report "
                        "compares clocks of one kind only")
    args = p.parse_args(argv)
    if args.new and args.replace:
        p.error("--new and --replace contradict each other")
    for line in add_runs(args.archive, args.runs, args.source, args.replace, args.new, args.clock):
        print(line)
    return 0


if __name__ == "__main__":
    import sys

    from mt_dnn.cli_utils import run_cli

    sys.exit(run_cli(main))
