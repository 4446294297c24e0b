"""The step costs that ship for ``campaign --dry_run --step_costs`` (``experiments/rapt/results/step_costs.json``).

    python -m experiments.rapt.step_costs            # rewrites results/step_costs.json from the files below
    python -m experiments.rapt.step_costs --check    # only says whether it is up to date

Seconds per optimizer step of every task and method the campaigns ran, from the Table 2 archive
(``results/archive_table2.json``: each CPU run's training seconds over its steps, mean over seeds) and, for a
method no CPU run of a task measured, that task's standard cost times the method's cost ratio to standard in the
controlled CPU benchmark (``results/speed_rte.json``: every method on the same real batches). The archive's CPU
clocks are those of single-thread runs two at a time on 2 cores, with the packaged MiniLM, batch 32 and length 128,
so the estimates are for that setting; another machine or encoder measures its own (``--costs_from``).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from data_utils import atomic
from experiments.rapt.archive import load_archive

RESULTS = Path(__file__).resolve().parent / "results"
ARCHIVE = RESULTS / "archive_table2.json"
BENCHMARK = RESULTS / "speed_rte.json"
OUT = RESULTS / "step_costs.json"


def step_costs(archive: Path = ARCHIVE, benchmark: Path = BENCHMARK) -> dict:
    """``{"source": text, task: {method: seconds per step}}``: measured where a CPU run exists, else scaled."""
    per_run: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in load_archive(archive):
        if run.device == "cpu" and run.clock == "steps" and run.train_seconds and run.steps:
            per_run[run.task][run.name].append(run.train_seconds / run.steps)
    bench = json.loads(benchmark.read_text())["median_seconds"]
    table: dict = {"source": (
        f"Seconds per optimizer step: the mean over seeds of each CPU run's training seconds / steps in "
        f"{archive.name} (single-thread runs two at a time on 2 cores; packaged MiniLM, batch 32, length 128); a "
        f"method without a CPU run on a task is the task's standard cost x that method's / standard ratio of "
        f"median step times in {benchmark.name}. Written by python -m experiments.rapt.step_costs.")}
    for task in sorted(per_run):
        costs = {name: round(sum(v) / len(v), 3) for name, v in sorted(per_run[task].items())}
        for method, seconds in bench.items():
            if method not in costs and "standard" in costs:
                costs[method] = round(costs["standard"] * seconds / bench["standard"], 3)
        table[task] = dict(sorted(costs.items()))
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.step_costs",
                                description="Rewrite the shipped step costs (campaign --dry_run's default table) "
                                            "from the Table 2 archive and the CPU benchmark.")
    p.add_argument("--out", default=str(OUT), help="where to write the table (default: the shipped file)")
    p.add_argument("--check", action="store_true",
                   help="write nothing: exit 1 when the shipped file differs from what the archive gives")
    args = p.parse_args(argv)
    text = json.dumps(step_costs(), indent=1) + "\n"
    if args.check:
        same = Path(args.out).is_file() and Path(args.out).read_text() == text
        print(f"{args.out}: {'up to date' if same else 'differs from the archive and the benchmark'}")
        return 0 if same else 1
    atomic.write_text(Path(args.out), text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
