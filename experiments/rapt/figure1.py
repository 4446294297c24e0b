"""Figure 1 of the paper, from a campaign's runs: dev score against training time, one line per method.

    python -m experiments.rapt.figure1 --root runs/pilot --tasks rte,mrpc --out experiments/rapt/results/figure1.png

Reads ``ROOT/<task>/<method name>/s<seed>*/metrics.jsonl`` (the campaign's layout). Each dev evaluation is a
point: x = the run's cumulative ``train_seconds`` at that evaluation (minutes; training steps only, evaluation
excluded), y = the task's primary dev metric (x100; MNLI: mean of matched and mismatched). With several seeds,
the i-th evaluations are averaged (x and y) over the seeds that have one; unfinished runs are drawn as far as
they got. The paper's Figure 1 shows SMART vs RAPT on MNLI as two bars (accuracy, minutes); this draws the whole
curve per method, which shows the same two numbers at its last point and also whether a method gets there sooner.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from data_utils import atomic
from data_utils.task_def import ConfigError
from experiments.rapt.paper import TASK_LABEL
from experiments.rapt.results import RunResult, scan_results
from mt_dnn.cli_utils import run_cli, setup_logging

logger = logging.getLogger(__name__)

DEFAULT_METHODS = "standard,smart,rapt,rapt_shared"


def headless_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, out: str | Path,
                table: tuple[str | Path | None, list[str]] | None = None) -> tuple[Path, Path | None]:
    """Write ``fig`` to ``out`` (format from its suffix, 120 dpi; made whole or not at all) and close it; with
    ``table`` = (path or None for ``out`` with .md, markdown lines), write those lines beside it. Returns the
    paths written: (figure, table or None)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    if table is None:
        return out, None
    md = Path(table[0]) if table[0] else out.with_suffix(".md")
    atomic.write_text(md, "\n".join(table[1]))
    return out, md


def campaign_folder(path: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such folder")
    return root


def curve(runs: list[RunResult]) -> tuple[np.ndarray, np.ndarray, int]:
    """(minutes, score x100, seeds) of a method: the i-th evaluation averaged over the seeds that reach it."""
    longest = max(len(r.evaluations) for r in runs)
    xs, ys = [], []
    for i in range(longest):
        points = [r.evaluations[i] for r in runs if len(r.evaluations) > i]
        xs.append(np.mean([e.train_seconds for e in points]) / 60.0)
        ys.append(np.mean([e.primary for e in points]) * 100.0)
    return np.asarray(xs), np.asarray(ys), len(runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.figure1",
                                description="Dev score vs training time per method (the paper's Figure 1).")
    p.add_argument("--root", required=True, help="a campaign folder (<task>/<method>/s<seed>*/metrics.jsonl)")
    p.add_argument("--tasks", default="rte,mrpc", help="comma-separated tasks, one subplot each")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="method names to draw, those present")
    p.add_argument("--out", default="experiments/rapt/results/figure1.png",
                   help="the PNG (default: the study's own figure, which it replaces)")
    args = p.parse_args(argv)
    setup_logging()
    plt = headless_pyplot()
    root = campaign_folder(args.root)
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    results = [r for r in scan_results(root) if r.evaluations]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 4.0), squeeze=False)
    drawn = 0
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in results if r.task == task]
        metric = mine[0].metric if mine else "score"
        print(f"{task} (dev {metric} x100 vs training minutes):")
        for method in methods:
            runs = [r for r in mine if r.name == method]
            if not runs:
                continue
            x, y, seeds = curve(runs)
            ax.plot(x, y, marker="o", color=f"C{methods.index(method)}",  # one colour per method in every subplot
                    label=f"{method} ({seeds} seed{'s' * (seeds > 1)})")
            drawn += 1
            points = ", ".join(f"{a:.2f} min {b:.1f}" for a, b in zip(x, y))
            print(f"  {method:12s} {seeds} seed(s), {len(x)} points: {points}")
        if not any(r.name in methods for r in mine):
            print("  (no runs)")
        ax.set_title(TASK_LABEL.get(task, task))
        ax.set_xlabel("training time (minutes)")
        ax.set_ylabel(f"dev {metric} (x100)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if not drawn:
        raise ConfigError(f"{root}: no dev evaluations of {', '.join(methods)} on {', '.join(tasks)}")
    out, _ = save_figure(plt, fig, args.out)
    print(f"wrote {out} ({drawn} line(s))")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
