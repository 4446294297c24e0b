"""The training log's per-step statistics of finished or running runs: first, last, mean, min and max.

    python -m experiments.rapt.logstats runs/table2/rte/smart/s1-83f1d324 runs/table2/mrpc/smart/*
    python -m experiments.rapt.logstats --root runs/table2 --methods smart,smart_step1e-2 --keys smart_grad_share

The trainer logs, every ``--log_every`` steps, a line ``step N/TOTAL loss L reg R lr X key value ...`` in the
run's ``train.log``; the keys after ``lr`` are the regularizer's own (SMART: ``smart_grad_share``,
``smart_delta_inf``, ...; RAPT: ``rapt_layer``, ``rapt_noise_ratio``), each the value of step N itself.

``loss`` and ``reg`` are not: they are running means, the task and regularizer losses summed over steps 1..N and
divided by N (``mt_dnn.trainer``'s sums and step count: a skipped, non-finite step counts in neither, and a resume
restores both from the checkpoint, so N is also the number of steps summed). For them the table gives the mean of
each logging interval instead, recovered from two consecutive lines: (m_k N_k - m_{k-1} N_{k-1}) / (N_k - N_{k-1})
(for the first line, m_1 itself). First, last, min and max are over those interval means, and the mean is the mean
over the steps (the last line's running mean). The log has 4 decimals of each running mean, so a recovered interval
mean is exact to +-0.00005 (N_k + N_{k-1}) / (N_k - N_{k-1}): the table's last column gives the largest such bound
of the run (it grows with the step number; a small ``reg`` may be lost in it).

The log is read as the finished run keeps it. Each process the run folder saw starts with its ``command:`` line.
A process that resumed a checkpoint (``resumed from ... at step S``) ran the steps after S again: the lines of
earlier processes after step S are dropped (the later line of a step wins, and a line past where a still running
resume has got is not the finished run's). A process that started from scratch in the same folder (a restart
keeps train.log and appends to it) begins again at step 0: every earlier line is dropped. The table is markdown,
one row per (run, key).
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
COMMAND_LINE = re.compile(r"\bINFO [\w.]+: command: ")  # mt_dnn.train's first line in train.log, per process
RESUMED_LINE = re.compile(r"\bresumed from .* at step (\d+) \(epoch")
DEFAULT_KEYS = ("smart_grad_share", "rapt_noise_ratio", "reg")
RUNNING_MEANS = ("loss", "reg")  # logged as means over steps 1..N, not as step N's value
DECIMALS = 4  # the trainer logs loss and reg with %.4f


def read_steps(log: Path) -> dict[int, dict[str, float]]:
    """{step: {key: value}} from a train.log's step lines, as the finished run keeps them: the last line of a step
    wins, and a process's restart from scratch or from a checkpoint at step S drops the earlier processes' lines
    after step 0 or S (see the module doc)."""
    steps: dict[int, dict[str, float]] = {}
    start: int | None = None  # where the current process started, until its first step line
    for line in log.read_text(errors="replace").splitlines():
        if COMMAND_LINE.search(line):
            start = 0  # a new process: from scratch unless it says it resumed
            continue
        resumed = RESUMED_LINE.search(line)
        if resumed:
            start = int(resumed.group(1))
            continue
        m = STEP_LINE.search(line)
        if not m:
            continue
        if start is not None:  # the first step line of a process: what earlier processes logged after its start
            steps = {s: v for s, v in steps.items() if s <= start}  # is not the run that goes on
            start = None
        words = m.group(3).split()
        values = {}
        for key, value in zip(words[0::2], words[1::2]):
            try:
                values[key] = float(value)
            except ValueError:
                continue
        steps[int(m.group(1))] = values
    return steps


def interval_means(series: list[tuple[int, float]]) -> list[tuple[int, int, float, float]]:
    """(step, steps in the interval, mean over the interval, rounding bound) of each logging interval, from the
    running means ``series`` [(N, mean over steps 1..N)] in step order (see the module doc)."""
    out = []
    half = 0.5 * 10 ** -DECIMALS
    prev_n, prev_m = 0, 0.0
    for n, m in series:
        width = n - prev_n
        out.append((n, width, (m * n - prev_m * prev_n) / width, half * (n + prev_n) / width))
        prev_n, prev_m = n, m
    return out


def summarise(steps: dict[int, dict[str, float]], key: str) -> dict | None:
    """First, last (by step), mean, min and max of one key over the logged steps; None when never logged. For the
    running means (``loss``, ``reg``): of the logging intervals' means, the mean weighted by the steps, and
    ``rounding``, the largest error the log's decimals allow in an interval mean."""
    series = [(s, v[key]) for s, v in sorted(steps.items()) if key in v]
    if not series:
        return None
    out = {"steps": len(series), "first_step": series[0][0], "last_step": series[-1][0], "values": "at step"}
    if key in RUNNING_MEANS:
        intervals = interval_means(series)
        values = np.array([mean for _, _, mean, _ in intervals])
        # the mean over all steps is the last line's running mean (the intervals' means weighted by their steps)
        return {**out, "values": "interval means", "first": float(values[0]), "last": float(values[-1]),
                "mean": float(series[-1][1]), "min": float(values.min()), "max": float(values.max()),
                "rounding": max(b for _, _, _, b in intervals)}
    values = np.array([v for _, v in series])
    return {**out, "first": float(values[0]), "last": float(values[-1]), "mean": float(values.mean()),
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
                                description="First, last, mean, min and max of the training log's per-step values "
                                            "(loss and reg: of each logging interval's mean).")
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
    lines = ["| run | key | logged steps | first | last | mean | min | max | values |",
             "|---|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        log = folder / "train.log"
        if not log.is_file():
            raise ConfigError(f"{log}: no such file (is {folder} a run folder?)")
        steps = read_steps(log)
        label = "/".join(folder.parts[-3:])
        for key in keys:
            s = summarise(steps, key)
            if s is not None:
                what = (f"mean of each logging interval, +-{s['rounding']:.1g}" if "rounding" in s
                        else "value at the logged step")
                lines.append(f"| {label} | {key} | {s['steps']} ({s['first_step']}-{s['last_step']}) | "
                             f"{s['first']:.4g} | {s['last']:.4g} | {s['mean']:.4g} | {s['min']:.4g} | "
                             f"{s['max']:.4g} | {what} |")
    print("\n".join(lines))
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
