"""Figures 2 and 3 of the paper: dev score against RAPT's ``max_layer`` (the layer sweep), from a campaign.

    python -m experiments.rapt.campaign --grid experiments/rapt/grids/layers.yml --root runs/layers --jobs 2
    python -m experiments.rapt.layers --root runs/layers [--tasks mrpc,rte] [--baseline runs/table2] \
        [--out experiments/rapt/results/layers.png] [--table experiments/rapt/results/layers.md] \
        [--archive experiments/rapt/results/archive_layers.json \
         --baseline_archive experiments/rapt/results/archive_table2.json]   # runs whose folders are gone

Every finished RAPT run under ``ROOT/<task>/<method name>/s<seed>*`` is a point: x = its ``rapt_max_layer``
(from the run's ``config.json``; 0 is drawn as "embed": noise on the embedding output only; k >= 1: a layer
drawn from 1..k per mini-batch), y = its best dev evaluation's primary metric (x100), averaged over seeds.
Runs of another method, or with an eta other than ``--eta``, are left out. One subplot per task, and a
markdown table (task x max_layer: mean, seeds) beside the PNG. Every panel and table spans the max_layers that
any shown task has, so a point a task has not run yet is a gap in its line and a ``-`` in its table.

``--baseline DIR`` (e.g. the core grid's root) puts the scale of the effect beside it: a dashed line at the
baseline method's score on the sweep's seeds, and a band of its mean ± std over all its seeds (the seed noise).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from data_utils.task_def import ConfigError
from experiments.rapt.archive import load_archives, with_archive
from experiments.rapt.figure1 import campaign_folder, headless_pyplot, save_figure
from experiments.rapt.paper import TASK_LABEL
from experiments.rapt.results import RunResult, scan_results
from mt_dnn.cli_utils import run_cli, setup_logging

logger = logging.getLogger(__name__)


def sweep_runs(results: list[RunResult], task: str, eta: float) -> list[tuple[RunResult, int]]:
    """(run, max_layer) of each finished RAPT run of the task with this eta (each config.json read once)."""
    out = []
    for r in results:
        if r.task != task or not r.finished or r.best is None:
            continue
        cfg = r.settings()
        opts = cfg.get("method_options", {})
        if cfg.get("method") == "rapt" and abs(float(opts.get("eta", 2.0)) - eta) <= 1e-9:
            out.append((r, int(opts.get("max_layer", 3))))
    return out


def layer_points(runs: list[tuple[RunResult, int]]) -> dict[int, list[float]]:
    """max_layer -> best dev primary metric (x100) of each sweep run."""
    points: dict[int, list[float]] = {}
    for r, layer in runs:
        points.setdefault(layer, []).append(r.best.primary * 100.0)
    return dict(sorted(points.items()))


def baseline_scores(results: list[RunResult], task: str, method: str) -> dict[int, float]:
    """seed -> best dev primary metric (x100) of the finished ``method`` runs of the task."""
    return {r.seed: r.best.primary * 100.0 for r in results
            if r.task == task and r.name == method and r.finished and r.best is not None}


def label(layer: int) -> str:
    return "embed" if layer == 0 else str(layer)


def draw_baseline(ax, scores: dict[int, float], seeds: set[int], method: str) -> str | None:
    """The baseline on the sweep's seeds (dashed line) and its mean ± std over all its seeds (band); the table's
    note, or None without baseline runs of the sweep's seeds."""
    same = [scores[s] for s in sorted(seeds) if s in scores]
    if not same:
        return None
    level = float(np.mean(same))
    ax.axhline(level, ls="--", color="gray", label=f"{method} (same seeds)")
    note = f"{method} on the same seed(s) {', '.join(map(str, sorted(s for s in seeds if s in scores)))}: {level:.1f}"
    if len(scores) >= 2:
        values = np.array(list(scores.values()))
        mean, std = float(values.mean()), float(values.std(ddof=1))
        ax.axhspan(mean - std, mean + std, color="gray", alpha=0.15,
                   label=f"{method} mean ± std, {len(values)} seeds")
        note += f"; over seeds {', '.join(map(str, sorted(scores)))}: {mean:.1f} ± {std:.1f} (the seed noise)"
    ax.legend(fontsize=8)
    return note + "."


def gather(folder: str | None, archives: list[str] | None) -> list[RunResult]:
    """The runs under ``folder`` plus the archives' (a folder wins); the folder may be missing if an archive is
    given."""
    results = []
    if folder and (Path(folder).exists() or not archives):
        results = scan_results(campaign_folder(folder))
    return with_archive(results, load_archives(archives)) if archives else results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.layers",
                                description="Dev score against RAPT's max_layer (the paper's Figures 2 and 3).")
    p.add_argument("--root", required=True, help="a campaign folder (<task>/<method>/s<seed>*/)")
    p.add_argument("--tasks", default="mrpc,rte", help="comma-separated tasks, one subplot each (those present)")
    p.add_argument("--eta", type=float, default=2.0, help="only runs with this RAPT eta")
    p.add_argument("--baseline", help="a campaign folder whose --baseline_method runs give the reference line "
                                      "(same seeds as the sweep) and the seed-noise band (mean ± std, all seeds)")
    p.add_argument("--baseline_method", default="standard", help="method name of the baseline runs")
    p.add_argument("--archive", nargs="+", help="archived sweep runs (JSON, entries with a `config`) beside "
                                                "--root's folders; a folder wins over an archived cell")
    p.add_argument("--baseline_archive", nargs="+", help="archived baseline runs beside --baseline's folders")
    p.add_argument("--out", default="experiments/rapt/results/layers.png",
                   help="the PNG (default: the study's own figure, which it replaces)")
    p.add_argument("--table", default=None, help="markdown table (default: --out with .md)")
    args = p.parse_args(argv)
    setup_logging()
    plt = headless_pyplot()
    root = Path(args.root)
    results = gather(args.root, args.archive)
    wanted = [t for t in args.tasks.split(",") if t]
    sweeps = {t: sweep_runs(results, t, args.eta) for t in wanted}
    found = {t: layer_points(sweeps[t]) for t in wanted}
    tasks = [t for t in wanted if found[t]]
    if not tasks:
        raise ConfigError(f"{root}: no finished RAPT runs (eta {args.eta:g}) of {', '.join(wanted)}")
    base_results = gather(args.baseline, args.baseline_archive)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 4.0), squeeze=False)
    lines = [f"RAPT (eta {args.eta:g}): best dev score (x100) against max_layer; mean over seeds [seeds]. "
             f"`embed` = noise on the embedding output only; k = a layer drawn from 1..k per mini-batch.", ""]
    columns = sorted({k for t in tasks for k in found[t]})  # one x axis and one table header for every task
    for ax, task in zip(axes[0], tasks):
        pts = found[task]
        mean = {k: float(np.mean(v)) for k, v in pts.items()}  # max_layer -> mean over seeds
        metric = next(r.metric for r in results if r.task == task)
        ax.plot(columns, [mean.get(k, np.nan) for k in columns], marker="o",  # NaN: a gap in the line
                label=f"RAPT, eta {args.eta:g}")
        ax.set_xticks(columns, [label(k) for k in columns])
        note = draw_baseline(ax, baseline_scores(base_results, task, args.baseline_method),
                             {r.seed for r, _ in sweeps[task]}, args.baseline_method)
        ax.set_title(f"{TASK_LABEL.get(task, task)} (RAPT, eta {args.eta:g})")
        ax.set_xlabel("max_layer")
        ax.set_ylabel(f"dev {metric} (x100)")
        ax.grid(alpha=0.3)
        lines += [f"**{TASK_LABEL.get(task, task)}** (dev {metric})", "",
                  "| max_layer | " + " | ".join(label(k) for k in columns) + " |",
                  "|---" * (len(columns) + 1) + "|",
                  f"| {metric} | " + " | ".join(f"{mean[k]:.1f} [{len(pts[k])}]" if k in pts else "-"
                                                 for k in columns) + " |", ""]
        if note:
            lines += [note, ""]
        best = max(mean, key=mean.get)
        missing = [label(k) for k in columns if k not in pts]
        print(f"{task}: " + ", ".join(f"{label(k)} {m:.1f}" for k, m in mean.items())
              + f"; best max_layer {label(best)}" + (f"; not run: {', '.join(missing)}" if missing else ""))
    out, table = save_figure(plt, fig, args.out, (args.table, lines))
    print(f"wrote {out} and {table}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
