"""Dev against robustness-set (AdvGLUE) score per run, one panel per task: how much of its accuracy each method
keeps under attack.

    python -m experiments.rapt.robustness_figure --root runs/robustness \
        [--archive experiments/rapt/results/archive_robustness.json] [--robustness_dir $GLUE_DIR/../advglue] \
        [--out experiments/rapt/results/robustness.png] [--table experiments/rapt/results/robustness.md]

Every finished run under ``ROOT/<task>/<method name>/s<seed>*`` (and every archived one whose folder is gone) is a
small point at (its best dev evaluation's primary metric, the robustness set's score logged at that same
evaluation), x100: the epoch is chosen on dev only, as in the report. Each method's mean over its seeds is a large
open marker with ± sd bars on both axes; every method has its own color and marker shape, so two methods at the
same point both stay visible. Points on a line of slope 1 have the same gap (dev - set); a method above
another at the same dev score keeps more under attack. With ``--robustness_dir`` a dotted line marks the set's
majority-class rate (always answering its most common label). Where runs keep every dev evaluation (run folders,
and archive entries with their ``evaluations``) and span several epochs, a second row of panels draws each
method's set score at the end of each epoch (mean ± sd over seeds): whether what a method keeps under attack
moves with the epoch more than between methods. The markdown table beside the PNG lists the same numbers: per
method, seeds, dev, set and gap (mean ± sd), and the set score by epoch.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from data_utils.robustness import load_sets, robustness_dir
from data_utils.task_def import ConfigError, load_task_defs
from experiments.rapt.figure1 import headless_pyplot, save_figure
from experiments.rapt.layers import gather
from experiments.rapt.paper import TASK_LABEL
from experiments.rapt.report import build_report
from experiments.rapt.results import RunResult
from experiments.rapt.robustness_report import mean_sd
from mt_dnn.cli_utils import run_cli, setup_logging

logger = logging.getLogger(__name__)

# the study's rows in reading order; other method names follow, sorted by name
ORDER = ("standard", "standard_hf", "smart", "rapt", "rapt_shared", "r3f")
LABELS = {"standard_hf": "standard, transformers.Trainer"}


def in_order(names) -> list[str]:
    """Method names in :data:`ORDER`, the others after them by name."""
    return sorted(set(names), key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def points(results: list[RunResult], methods: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """The report's robustness section for ``methods`` (default: every method, :data:`ORDER` first): task -> set
    -> {"rows": method -> seed -> [dev x100, set x100], "summary": method -> {seeds, dev, set, gap}}, at each
    finished run's best dev evaluation, methods in that order."""
    names = in_order(r.name for r in results)
    if methods:
        unknown = [m for m in methods if m not in names]
        if unknown:
            raise ConfigError(f"--methods {','.join(unknown)}: no runs of that method (methods: {', '.join(names)})")
        names = methods
    return build_report([r for r in results if r.name in names], names, baselines=names[:1]).get("robustness", {})


def majority_rate(task: str, set_name: str, folder: Path | None) -> float | None:
    """The share (x100) of the set's most common label for the task's dev splits, or None without the file."""
    if folder is None:
        return None
    tdef = load_task_defs().get(task)
    if tdef is None:
        return None
    labels = [ex.label for rs in load_sets(tdef, folder, warned=set()) if rs.set_name == set_name
              for ex in rs.examples]
    return 100.0 * Counter(labels).most_common(1)[0][1] / len(labels) if labels else None


def table(task: str, set_name: str, cell: dict, majority: float | None) -> list[str]:
    lines = [f"**{TASK_LABEL.get(task, task)}**: dev and {set_name} (x100, mean ± sd over seeds)", "",
             f"| Method | Seeds | dev | {set_name} | gap (dev - {set_name}) |", "|---|---|---|---|---|"]
    for name, s in cell["summary"].items():
        lines.append(f"| {LABELS.get(name, name)} | {', '.join(map(str, s['seeds']))} | {mean_sd(s['dev'])} | "
                     f"{mean_sd(s['set'])} | {mean_sd(s['gap'])} |")
    if majority is not None:
        lines += ["", f"Majority class of {set_name} ({TASK_LABEL.get(task, task)}): {majority:.1f}."]
    return lines + [""]


def epoch_table(task: str, set_name: str, history: dict) -> list[str]:
    epochs = history["epochs"]
    lines = [f"**{TASK_LABEL.get(task, task)}**: {set_name} at the end of each epoch (x100, mean ± sd over seeds)", "",
             "| Method | Seeds | " + " | ".join(f"epoch {e + 1}" for e in epochs) + " |",
             "|---|---|" + "---|" * len(epochs)]
    for name, row in history["rows"].items():
        cells = [mean_sd(row["set"][str(e)]) if str(e) in row["set"] else "-" for e in epochs]
        lines.append(f"| {LABELS.get(name, name)} | {', '.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    return lines + [""]


def draw_epochs(ax, task: str, set_name: str, history: dict, majority: float | None,
                style: dict[str, tuple[str, str]]) -> None:
    """One by-epoch panel: each method's set score at the end of each epoch, mean ± sd over its seeds, methods
    side by side at each epoch (a small offset) so that their bars stay apart."""
    rows = history["rows"]
    width = 0.5 / max(len(rows), 1)
    for i, (name, row) in enumerate(rows.items()):
        color, marker = style[name]
        epochs = [e for e in history["epochs"] if str(e) in row["set"]]
        x = np.array(epochs, dtype=float) + 1 + (i - (len(rows) - 1) / 2) * width
        mean = [row["set"][str(e)][0] for e in epochs]
        sd = [row["set"][str(e)][1] or 0.0 for e in epochs]
        ax.errorbar(x, mean, yerr=sd, fmt="-" + marker, ms=6, mfc="none", color=color, capsize=2, lw=1,
                    label=f"{LABELS.get(name, name)} ({len(row['seeds'])} seed{'s' if len(row['seeds']) > 1 else ''})")
    if majority is not None:
        ax.axhline(majority, ls=":", color="gray", label=f"{set_name}: majority class")
    ax.set_xticks([e + 1 for e in history["epochs"]])
    ax.set_title(f"{TASK_LABEL.get(task, task)}: {set_name} by epoch")
    ax.set_xlabel("epoch (its last evaluation)")
    ax.set_ylabel(f"{set_name} (x100)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


# one marker shape per method (with its color), so that methods at the same point stay visible
MARKERS = "osD^vPX*<>"


def styles(names) -> dict[str, tuple[str, str]]:
    """Method name -> (color, marker shape), in :func:`in_order`'s order: the same in every panel."""
    return {n: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, n in enumerate(in_order(names))}


def draw(ax, task: str, set_name: str, cell: dict, majority: float | None,
         style: dict[str, tuple[str, str]]) -> None:
    """One panel: each run a small filled point, each method's mean a large open marker with ± sd bars (style:
    one (color, marker) per method, the same in every panel; open markers of different shapes stay visible
    where two methods' means coincide)."""
    for name, per_seed in cell["rows"].items():
        color, marker = style[name]
        dev = np.array([v[0] for v in per_seed.values()])
        adv = np.array([v[1] for v in per_seed.values()])
        ax.scatter(dev, adv, s=14, color=color, marker=marker, alpha=0.5)
        seeds = f"{len(per_seed)} seed" + ("s" if len(per_seed) > 1 else "")
        ax.errorbar(dev.mean(), adv.mean(), xerr=_sd(dev), yerr=_sd(adv), fmt=marker, ms=9, mfc="none", mew=1.5,
                    color=color, capsize=3, label=f"{LABELS.get(name, name)} ({seeds})")
    if majority is not None:
        ax.axhline(majority, ls=":", color="gray", label=f"{set_name}: majority class")
    ax.set_title(f"{TASK_LABEL.get(task, task)}: dev against {set_name}")
    ax.set_xlabel("dev (x100, best dev evaluation)")
    ax.set_ylabel(f"{set_name} (x100, same evaluation)")
    ax.grid(alpha=0.3)
    # the legend below the panel, where no run's point can hide under it
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.robustness_figure",
                                description="Dev against robustness-set (AdvGLUE) score per run and method.")
    p.add_argument("--root", required=True, help="a campaign folder (<task>/<method>/s<seed>*/); may be missing "
                                                 "when --archive is given")
    p.add_argument("--archive", nargs="+", help="archived runs (JSON; several files: their cells together) beside "
                                                "--root's folders; a folder wins")
    p.add_argument("--tasks", help="comma-separated tasks, one panel each (default: every task with a set)")
    p.add_argument("--methods", help="comma-separated method names, in legend order (default: all)")
    p.add_argument("--robustness_dir", help="folder of the robustness files, for the majority-class line "
                                            "(default: $ROBUSTNESS_DIR; none: no line)")
    p.add_argument("--out", default="experiments/rapt/results/robustness.png")
    p.add_argument("--table", help="markdown table (default: --out with .md)")
    args = p.parse_args(argv)
    setup_logging()
    if not Path(args.root).is_dir() and not args.archive:
        raise ConfigError(f"--root {args.root}: no such folder")
    found = points(gather(args.root, args.archive), [m for m in (args.methods or "").split(",") if m] or None)
    tasks = [t for t in (args.tasks.split(",") if args.tasks else found) if t in found]
    if not tasks:
        raise ConfigError(f"{args.root}: no finished run logged a robustness set"
                          + (f" for {args.tasks}" if args.tasks else ""))
    folder = robustness_dir(args.robustness_dir, None)
    panels = [(t, s, cell) for t in tasks for s, cell in found[t].items()]
    style = styles(n for _, _, cell in panels for n in cell["rows"])
    plt = headless_pyplot()
    by_epoch = any("by_epoch" in cell for _, _, cell in panels)
    fig, axes = plt.subplots(1 + by_epoch, len(panels), figsize=(5.5 * len(panels), 5.6 * (1 + by_epoch)),
                             squeeze=False)
    lines = []
    for i, (task, set_name, cell) in enumerate(panels):
        majority = majority_rate(task, set_name, folder)
        draw(axes[0][i], task, set_name, cell, majority, style)
        lines += table(task, set_name, cell, majority)
        if "by_epoch" in cell:
            draw_epochs(axes[1][i], task, set_name, cell["by_epoch"], majority, style)
            lines += epoch_table(task, set_name, cell["by_epoch"])
        elif by_epoch:
            axes[1][i].set_visible(False)
    out, md = save_figure(plt, fig, args.out, (args.table, lines))
    print(f"wrote {out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
