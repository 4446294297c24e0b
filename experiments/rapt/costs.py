"""Cost estimates of a campaign's runs (seconds per step measured or given, times steps) and the dry run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from data_utils.task_def import ConfigError
from experiments.rapt.grid import Run
from experiments.rapt.launch import run_status
from experiments.rapt.results import done_steps, read_records, task_defs


def total_steps(cfg, rows: int | None) -> int | None:
    """Optimizer steps of a single-task run, as the trainer counts them (None when the train size is unknown)."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    if rows is None:
        return None
    if cfg.max_train_samples:
        rows = min(rows, cfg.max_train_samples)
    micro = math.ceil(rows / cfg.batch_size)
    return cfg.epochs * math.ceil(micro / cfg.grad_accumulation_steps)


class CostKey(NamedTuple):
    """What makes steps cost alike: task, method, RAPT's shared-lower-layers path, SMART's K, batch, length, model."""

    task: str
    method: str | None
    shared: bool
    smart_k: Any
    batch_size: Any
    max_seq_len: Any
    model: Any

    def as_standard(self) -> "CostKey":
        """The standard-fine-tuning key with this one's task, batch, length and model."""
        return self._replace(method="standard", shared=False, smart_k=None)


def cost_key(task: str, identity: dict[str, Any]) -> CostKey:
    return CostKey(task, identity.get("method"), bool(identity.get("rapt_share_lower_layers", False)),
                   identity.get("smart_k"), identity.get("batch_size"), identity.get("max_seq_len"),
                   identity.get("model"))


def measured_step_costs(*roots: Path) -> tuple[dict[tuple, list[float]], dict[tuple, list[float]]]:
    """Seconds per step of every finished run under the ROOTs: by (task, method name) and by :func:`cost_key`."""
    by_name: dict[tuple, list[float]] = {}
    by_key: dict[tuple, list[float]] = {}
    seen: set[str] = set()
    for flags_file in sorted(f for root in roots for f in root.glob("*/*/*/flags.json")):
        folder = flags_file.parent
        records = read_records(folder / "metrics.jsonl")
        last = records[-1] if records else {}
        if (last.get("split") != "train" or not isinstance(last.get("steps"), (int, float)) or not last["steps"]
                or not isinstance(last.get("train_seconds"), (int, float))):
            continue  # unfinished, or its train record does not say how long it took
        info = json.loads(flags_file.read_text())
        origin = info.get("adopted_from") or str(folder.resolve())  # an adopted copy is the same run
        if origin in seen:
            continue
        seen.add(origin)
        cost = float(last["train_seconds"]) / float(last["steps"])
        by_name.setdefault((info["task"], info["method_name"]), []).append(cost)
        by_key.setdefault(cost_key(info["task"], info["identity"]), []).append(cost)
    return by_name, by_key


def step_cost(run: Run, by_name: dict, by_key: dict, table: dict,
              table_name: str = "--step_costs") -> tuple[float | None, str]:
    """(seconds per step, where it came from) for one run."""
    if (run.task, run.name) in by_name:
        v = by_name[(run.task, run.name)]
        return float(np.mean(v)), f"measured ({len(v)} run{'s' * (len(v) > 1)})"
    k = cost_key(run.task, run.identity)
    if k in by_key:
        v = by_key[k]
        return float(np.mean(v)), f"measured {run.method} ({len(v)})"
    for task_key in (run.task, "*"):
        costs = table.get(task_key, {})
        for m in (run.name, run.method):
            if m in costs:
                return float(costs[m]), f"{table_name} {task_key}.{m}"
    return scaled_cost(run.task, k, by_key, table)


def scaled_cost(task: str, key: CostKey, by_key: dict, table: dict) -> tuple[float | None, str]:
    """A method never measured on this task: this task's standard step cost (measured, else --step_costs) times
    the method's cost ratio to standard measured on the other tasks (same batch, length and model)."""
    if key.method == "standard":
        return None, "unknown"
    base = by_key.get(key.as_standard())
    base_cost = float(np.mean(base)) if base else table.get(task, {}).get("standard")
    ratios = {k.task: float(np.mean(v)) / float(np.mean(by_key[k.as_standard()]))
              for k, v in by_key.items()
              if k.task != task and k._replace(task=task) == key and k.as_standard() in by_key}
    if base_cost is None or not ratios:
        return None, "unknown"
    ratio = float(np.mean(list(ratios.values())))
    return float(base_cost) * ratio, f"standard x {ratio:.2f} ({', '.join(sorted(ratios))})"


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


SHIPPED = Path(__file__).resolve().parent / "results" / "step_costs.json"


def shipped_costs_apply(run: Run) -> bool:
    """Whether the shipped step costs (the packaged MiniLM on a CPU, batch 32, length 128) describe ``run``."""
    cfg = run.config
    return cfg.model is None and cfg.batch_size == 32 and cfg.max_seq_len == 128 and not cfg.lora_rank


def dry_run(runs: list[Run], root: Path, jobs: int, step_costs_file: str | None,
            costs_from: list[str] | None = None, archived: set[str] | None = None,
            adopting: set[str] | None = None) -> int:
    """Print the plan (done / archived / adopt / resume / run) with estimated CPU time per run and in total; runs
    nothing. ``archived``: labels of cells whose result comes from ``--archive`` (not trained again);
    ``adopting``: labels of cells that ``--adopt`` would fill with a finished run made elsewhere.
    ``step_costs_file`` None: the shipped CPU costs (``results/step_costs.json``), for the runs they describe."""
    table: dict = {}
    shipped = step_costs_file is None
    if shipped:
        step_costs_file = str(SHIPPED) if SHIPPED.is_file() else None
    if step_costs_file:
        try:
            table = json.loads(Path(step_costs_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{step_costs_file}: cannot read step costs ({exc})") from None
        if isinstance(table, dict):
            table.pop("source", None)  # where the costs come from (results/step_costs.json says it)
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ConfigError(f"{step_costs_file}: expected {{task: {{method: seconds per step}}}} "
                              "(and an optional \"source\" text)")
    for other in costs_from or []:
        if not Path(other).is_dir():
            raise ConfigError(f"--costs_from {other}: no such campaign folder")
    by_name, by_key = measured_step_costs(root, *map(Path, costs_from or []))
    defs = task_defs()
    total, unknown = 0.0, 0
    counts = {"done": 0, "archived": 0, "adopt": 0, "busy": 0, "resume": 0, "run": 0}
    print(f"{'status':7s} {'run':40s} {'steps':>7s} {'s/step':>7s}  {'estimate':>9s}  source")
    for run in runs:
        status = ("archived" if run.label in (archived or set()) else "adopt" if run.label in (adopting or set())
                  else run_status(run.folder))
        counts[status] += 1
        task = defs.get(run.task)
        rows = task.splits_of("train")[0].rows if task and task.splits_of("train") else None
        steps = total_steps(run.config, rows)
        if status in ("done", "archived", "adopt"):
            print(f"{status:7s} {run.label:40s} {steps if steps is not None else '?':>7}")
            continue
        started = status in ("resume", "busy")
        left = None if steps is None else max(steps - (done_steps(run.folder) if started else 0), 0)
        cost, source = step_cost(run, by_name, by_key, table if not shipped or shipped_costs_apply(run) else {},
                                 "shipped CPU cost" if shipped else "--step_costs")
        est = None if cost is None or left is None else cost * left
        if est is None:
            unknown += 1
        else:
            total += est
        print(f"{status:7s} {run.label:40s} {left if left is not None else '?':>7} "
              f"{f'{cost:.3f}' if cost is not None else '?':>7}  {fmt_time(est):>9s}  {source}")
    todo = counts["busy"] + counts["resume"] + counts["run"]
    print(f"\n{len(runs)} runs: {counts['done']} done, "
          + (f"{counts['archived']} archived, " if counts["archived"] else "")
          + (f"{counts['adopt']} to adopt, " if counts["adopt"] else "")
          + (f"{counts['busy']} running now, " if counts["busy"] else "")
          + f"{counts['resume']} to resume, {counts['run']} to run")
    known = f"{fmt_time(total)}" if unknown < todo or not todo else "?"
    print(f"estimated CPU time of the {todo} left: {known}"
          + (f" (+ {unknown} run(s) with no step cost: give --step_costs)" if unknown else "")
          + (f"; about {fmt_time(total / jobs)} of wall time with --jobs {jobs}" if jobs > 1 and total else ""))
    return 0
