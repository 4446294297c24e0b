"""The training log's per-step statistics of finished or running runs: first, last, mean, min and max.

    python -m experiments.rapt.logstats runs/table2/rte/smart/s1-83f1d324 runs/table2/mrpc/smart/*
    python -m experiments.rapt.logstats --root runs/table2 --methods smart,smart_step1e-2 --keys smart_grad_share

The trainer logs, every ``--log_every`` steps, a line ``step N/TOTAL loss L reg R lr X key value ...`` in the
run's ``train.log``; the keys after ``lr`` are the regularizer's own (SMART: ``smart_grad_share``,
``smart_delta_inf``, ...; RAPT: ``rapt_layer``, ``rapt_noise_ratio``). ``loss`` and ``reg`` are there too. A run
that was resumed logs some steps twice (the steps after its last checkpoint ran again): the later line of a step
wins, as that is the step the finished run kept. The table is markdown, one row per (run, key).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from data_utils.task_def import ConfigError
from experiments.rapt.campaign import _csv
from mt_dnn.cli_utils import run_cli, setup_logging

STEP_LINE = re.compile(r"\bstep (\d+)/(\d+) (.*)$")
DEFAULT_KEYS = ("smart_grad_share", "rapt_noise_ratio", "reg")


def read_steps(log: Path) -> dict[int, dict[str, float]]:
    """{step: {key: value}} from a train.log's step lines (the last line of a step wins)."""
    steps: dict[int, dict[str, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = STEP_LINE.search(line)
        if not m:
            continue
        words = m.group(3).split()
        values = {}
        for key, value in zip(words[0::2], words[1::2]):
            try:
                values[key] = float(value)
            except ValueError:
                continue
        steps[int(m.group(1))] = values
    return steps


def summarise(steps: dict[int, dict[str, float]], key: str) -> dict | None:
    """First, last (by step), mean, min and max of one key over the logged steps; None when never logged."""
    series = [(s, v[key]) for s, v in sorted(steps.items()) if key in v]
    if not series:
        return None
    values = np.array([v for _, v in series])
    return {"steps": len(series), "first_step": series[0][0], "last_step": series[-1][0],
            "first": float(values[0]), "last": float(values[-1]), "mean": float(values.mean()),
            "min": float(values.min()), "max": float(values.max())}


def run_folders(paths: list[str], root: str | None, methods: list[str] | None, tasks: list[str] | None) -> list[Path]:
    """The run folders named, or under ROOT/<task>/<method>/s*/ (filtered by task and method)."""
    out = [Path(p) for p in paths]
    if root:
        for log in sorted(Path(root).glob("*/*/s*/train.log")):
            folder = log.parent
            if (methods is None or folder.parent.name in methods) and (tasks is None or folder.parent.parent.name in tasks):
                out.append(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.logstats",
                                description="First, last, mean, min and max of the training log's per-step values.")
    p.add_argument("runs", nargs="*", help="run folders (each with a train.log)")
    p.add_argument("--root", help="a campaign folder: every ROOT/<task>/<method>/s*/ run with a train.log")
    p.add_argument("--methods", help="with --root: only these method names (comma-separated)")
    p.add_argument("--tasks", help="with --root: only these tasks (comma-separated)")
    p.add_argument("--keys", default=",".join(DEFAULT_KEYS),
                   help="the logged keys to summarise (comma-separated; default: %(default)s; those a run lacks "
                        "are left out)")
    args = p.parse_args(argv)
    setup_logging()
    folders = run_folders(args.runs, args.root, _csv(args.methods), _csv(args.tasks))
    if not folders:
        raise ConfigError("no runs: name run folders or give --root (with --methods/--tasks that match)")
    keys = _csv(args.keys) or []
    lines = ["| run | key | logged steps | first | last | mean | min | max |", "|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        log = folder / "train.log"
        if not log.is_file():
            raise ConfigError(f"{log}: no such file (is {folder} a run folder?)")
        steps = read_steps(log)
        label = "/".join(folder.parts[-3:])
        for key in keys:
            s = summarise(steps, key)
            if s is not None:
                lines.append(f"| {label} | {key} | {s['steps']} ({s['first_step']}-{s['last_step']}) | "
                             f"{s['first']:.4g} | {s['last']:.4g} | {s['mean']:.4g} | {s['min']:.4g} | "
                             f"{s['max']:.4g} |")
    print("\n".join(lines))
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
