"""Table 2 of a campaign: cells over seeds, the Average, best-of rows, training times, and its markdown/JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data_utils import atomic
from data_utils.task_def import ConfigError
from experiments.rapt.paper import METRIC_LABEL, PAPER_DEV, PAPER_METRICS, TASK_LABEL, cell_keys, task_order
from experiments.rapt import robustness_report
from experiments.rapt.results import RunResult
from experiments.rapt.stats import (TIE, adjust, family_text, mean_std, paired_cells, paired_comparisons,
                                    paired_header, seed_averages, size, size_text, verdict)


def training_times(by: dict[str, dict[str, dict[int, RunResult]]], names: list[str], tasks: list[str]) -> dict:
    """Table 3 style, per task and method: mean training minutes and seconds per step over seeds, the device the
    runs trained on, and the ratios to ``standard`` and ``smart`` where those ran on the same device with a clock
    of the same kind (``RunResult.clock``; a clock that included evaluations shows as ``<device>, clock with
    evaluations``). A method whose runs of a task trained on several devices (or kinds of clock) gets one row per
    device, named ``<method> @ <device>``. The
    runs' own clocks: compare runs made under the same conditions (the same --jobs, nothing else on the machine);
    experiments.rapt.speed is the controlled measure. CPU runs that recorded their process's CPU time
    (``train_cpu_seconds``) also get CPU seconds per step (``cpu_s_per_step``) and its ratios (``cpu/standard``,
    ``cpu/smart``): unlike the wall clock, it leaves out the time other programs took and pauses."""
    out: dict[str, dict] = {}
    for task in tasks:
        rows = {}
        for name in names:
            runs = [r for r in by.get(name, {}).get(task, {}).values() if r.train_seconds and r.steps]
            where = {id(r): r.device + (", clock with evaluations" if r.clock == "steps+eval" else "") for r in runs}
            devices = sorted(set(where.values()))
            for device in devices:
                on = [r for r in runs if where[id(r)] == device]
                other_clock = {"clock": on[0].clock} if on[0].clock != "steps" else {}  # one kind per device label
                row = rows[name if len(devices) == 1 else f"{name} @ {device}"] = {
                    "method": name, "device": device, **other_clock,
                    "minutes": float(np.mean([r.train_seconds for r in on])) / 60.0,
                    "s_per_step": float(np.mean([r.train_seconds / r.steps for r in on])), "runs": len(on)}
                if device == "cpu" and all(r.train_cpu_seconds for r in on):
                    row["cpu_s_per_step"] = float(np.mean([r.train_cpu_seconds / r.steps for r in on]))
        for row in rows.values():
            for base in ("standard", "smart"):
                same = [b for b in rows.values() if b["method"] == base and b["device"] == row["device"]]
                if same:
                    row[f"/{base}"] = row["s_per_step"] / same[0]["s_per_step"]
                    if "cpu_s_per_step" in row and "cpu_s_per_step" in same[0]:
                        row[f"cpu/{base}"] = row["cpu_s_per_step"] / same[0]["cpu_s_per_step"]
        if rows:
            out[task] = rows
    return out


BASELINES = ("standard", "smart")  # first rows of a report without a grid; paired tests compare against them


def build_report(results: list[RunResult], method_order: list[str] | None = None,
                 best_of: dict[str, list[str]] | None = None, baselines: list[str] | None = None,
                 not_started: list[str] | None = None, no_evaluation: list[str] | None = None) -> dict:
    """Table 2 from finished runs: cells (mean ± std over seeds of each run's best dev evaluation, x100),
    task scores, the Average, best-of rows, the paper's dev rows, and paired comparisons (each row against every
    row above it, or against only the ``baselines`` rows above it). ``not_started``: the grid's cells with neither
    a run folder nor an archived result (``task/name/s<seed>``; None when no grid says what should exist);
    ``no_evaluation``: the folders of the grid's runs that have started but not yet evaluated."""
    finished = [r for r in results if r.finished and r.best is not None]
    by: dict[str, dict[str, dict[int, RunResult]]] = {}
    for r in finished:
        by.setdefault(r.name, {}).setdefault(r.task, {})[r.seed] = r
    tasks = task_order({r.task for r in finished})
    rest = sorted(set(by) - set(method_order or []), key=lambda m: (BASELINES.index(m) if m in BASELINES else 2, m))
    names = [m for m in (method_order or []) if m in by] + rest  # without a grid: standard, smart, then the rest
    chosen: dict[str, dict[str, str]] = {}
    for group, members in (best_of or {}).items():
        picks = {}
        for task in tasks:
            have = [m for m in members if m in by and task in by[m]]
            common = set.intersection(*(set(by[m][task]) for m in have)) if have else set()
            # compared on the seeds every member has (a 3-seed mean against a single seed would not be fair)
            scores = {m: np.mean([r.best.primary for s, r in by[m][task].items() if not common or s in common])
                      for m in have}
            if scores:
                picks[task] = max(scores, key=lambda m: (scores[m], -members.index(m)))
        if picks:
            by[group] = {t: by[m][t] for t, m in picks.items()}
            chosen[group] = picks
            names.append(group)
    if method_order:  # a best-of row named in the order takes its place there, not the end
        rank = {n: i for i, n in enumerate(method_order)}
        names.sort(key=lambda n: rank.get(n, len(rank)))  # stable: unnamed rows keep their order, after the rest
    # a baseline must be a row: one with finished runs, or one whose runs are under way or not started yet (it
    # compares with nothing until it has finished runs)
    planned = {r.name for r in results} | {cell.split("/")[1] for cell in not_started or []}
    unknown = [b for b in baselines or [] if b not in names and b not in planned]
    if unknown:
        pending = sorted(planned - set(names))
        note = f"; not finished yet: {', '.join(pending)}" if pending else ""
        raise ConfigError(f"--baselines {','.join(unknown)}: no such row (rows: {', '.join(names)}{note})")
    rows: dict[str, dict] = {}
    for name in names:
        row: dict[str, Any] = {"tasks": {}}
        for task in tasks:
            runs = by[name].get(task)
            if not runs:
                continue
            seeds = sorted(runs)
            keys = cell_keys(task, runs[seeds[0]].best)
            for s in seeds[1:]:
                if cell_keys(task, runs[s].best) != keys:
                    raise ConfigError(f"{name} {task}: seed {s} ({runs[s].folder}) has the dev metrics "
                                      f"{cell_keys(task, runs[s].best)}, seed {seeds[0]} ({runs[seeds[0]].folder}) "
                                      f"has {keys}: one row cannot average them")
            cells = []
            for split, metric in keys:
                values = [runs[s].best.metrics[split][metric] * 100 for s in seeds]
                mean, std = mean_std(values)
                cells.append({"split": split, "metric": metric, "mean": mean, "std": std, "values": values})
            row["tasks"][task] = {"seeds": seeds, "cells": cells, "score": float(np.mean([c["mean"] for c in cells])),
                                  "best_epochs": {s: runs[s].best.epoch for s in seeds}}
            if name in chosen and task in chosen[name]:
                row["tasks"][task]["chosen"] = chosen[name][task]
        complete = all(t in row["tasks"] for t in tasks)
        row["average"] = float(np.mean([row["tasks"][t]["score"] for t in tasks])) if complete and tasks else None
        seed_lists = {tuple(row["tasks"][t]["seeds"]) for t in tasks} if complete else set()
        same = next(iter(seed_lists)) if len(seed_lists) == 1 else ()  # a best-of row may mix seed counts
        row["average_std"] = mean_std(seed_averages(by[name], tasks, list(same)))[1] if len(same) >= 2 else None
        rows[name] = row
    paper = {}
    for pname, prow in PAPER_DEV.items():
        have = [t for t in tasks if t in prow]
        paper[pname] = {"tasks": {t: prow[t] for t in have},
                        "average_these_tasks": float(np.mean([np.mean(prow[t]) for t in have])) if have else None,
                        "average_paper": prow["average"]}
    paired = paired_comparisons(by, names, tasks, best_of or {}, baselines)
    adjust(paired)  # the section's tests are one family
    size(paired)
    report = {"tasks": tasks, "methods": names, "rows": rows, "best_of": chosen, "paper": paper,
              "times": training_times(by, [n for n in names if n not in chosen], tasks),
              "paired": paired,
              "baselines": baselines,
              "unfinished": sorted([r.folder.as_posix() for r in results if not r.finished] + (no_evaluation or [])),
              "not_started": not_started}
    robust = robustness_report.build({n: by[n] for n in names if n not in chosen}, names,
                                     list(baselines or BASELINES))
    if robust:  # runs that logged a robustness set (AdvGLUE)
        report["robustness"] = robust
    return report


def _header(task: str, cells: list[dict] | None) -> str:
    metrics = PAPER_METRICS.get(task) or ([c["metric"] for c in cells] if cells else [])
    return f"{TASK_LABEL.get(task, task)} {'/'.join(METRIC_LABEL.get(m, m) for m in metrics)}"


def format_cell(cells: list[dict]) -> str:
    parts = []
    for c in cells:
        parts.append(f"{c['mean']:.1f}" + (f" ± {c['std']:.1f}" if c["std"] is not None else ""))
    return " / ".join(parts)


def per_seed_markdown(report: dict) -> list[str]:
    """One table per task: each run's best dev metrics (x100) per seed, and the epoch they came from."""
    lines = ["", "## Per seed", "", "Each run's best dev evaluation (x100; the task's metrics as in Table 2) and the "
             "epoch it came from (counted from 1; metrics.jsonl counts from 0); best-of rows are left out (they "
             "repeat their members' runs)."]
    for task in report["tasks"]:
        rows = {name: row["tasks"][task] for name, row in report["rows"].items()
                if task in row["tasks"] and name not in report["best_of"]}
        seeds = sorted({s for t in rows.values() for s in t["seeds"]})
        lines += ["", f"{_header(task, None)}:", "", "| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---" * (len(seeds) + 1) + "|"]
        for name, t in rows.items():
            cells = []
            for s in seeds:
                if s in t["seeds"]:
                    i = t["seeds"].index(s)
                    values = "/".join(f"{c['values'][i]:.1f}" for c in t["cells"])
                    epoch = t["best_epochs"][s]
                    cells.append(f"{values} (ep {epoch + 1 if epoch >= 0 else '?'})")
                else:
                    cells.append("-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _missing_lines(report: dict) -> list[str]:
    """What the table lacks: started runs that have not finished, and (with a grid) cells never started."""
    unfinished = ["/".join(Path(f).parts[-3:]) for f in report["unfinished"]]
    not_started = report.get("not_started")
    lines = [f"- Left out (not finished): {len(unfinished)} run(s)" + (": " + ", ".join(unfinished) if unfinished
                                                                       else "") + "."]
    if not_started is None:
        lines.append("- Not started: unknown (no grid given; `--grid` lists the cells that should exist).")
    else:
        lines.append(f"- Not started: {len(not_started)} run(s) of the grid" + (": " + ", ".join(not_started)
                                                                               if not_started else "") + ".")
    if not unfinished and not_started == []:
        lines.append("- Every run of the grid is in the table.")
    return lines


def _paired_line(c: dict, tasks: list[str]) -> str:
    """One paired comparison as a markdown table row."""
    return f"| {_task_label(c, tasks)} " + paired_cells(c)


def _task_label(c: dict, tasks: list[str]) -> str:
    """A paired test's task column: the task's label, or 'Average' (with the tasks it is over, where not all)."""
    if c["task"] != "average":
        return TASK_LABEL.get(c["task"], c["task"])
    return "Average" + ("" if c["over"] == tasks else " (" + ", ".join(TASK_LABEL.get(t, t) for t in c["over"]) + ")")


def _test_name(c: dict, tasks: list[str]) -> str:
    """A paired test in a few words: 'CoLA smart - standard -7.47 (p 0.026)'; the set it is on where it is one
    of the robustness section's ('SST advglue ...')."""
    label = _task_label(c, tasks) + (f" {c['on']}" if "on" in c else "")
    return f"{label} {c['a']} - {c['b']} {c['mean_diff']:+.2f} (p {c['p_value']:.3f})"


def verdict_summary(report: dict) -> str:
    """One paragraph at the top of the report: per family of paired tests (the paired comparisons; the robustness
    section's dev-chosen tests), how many there are, which are beyond seed noise after the Holm correction and
    which are leads (below 0.05 before it only), smallest p first."""
    families = [("Paired comparisons", report["paired"])]
    robust = [c for by_set in report.get("robustness", {}).values() for cell in by_set.values()
              for c in cell["paired"]]
    if robust:
        families.append(("Robustness, at the dev-chosen evaluation", robust))
    parts = []
    for heading, tests in families:
        tested = sorted((c for c in tests if c["p_value"] is not None), key=lambda c: c["p_value"])
        beyond = [_test_name(c, report["tasks"]) for c in tested if verdict(c) == "beyond seed noise"]
        leads = [_test_name(c, report["tasks"]) for c in tested if verdict(c) == "lead (not after Holm)"]
        parts.append(f"{heading}: {len(tested)} test{'' if len(tested) == 1 else 's'}; beyond seed noise after the "
                     "Holm correction: " + ("; ".join(beyond) if beyond else "none")
                     + ("; leads (p < 0.05 before the correction only): " + "; ".join(leads) if leads else
                        "; no other test below p 0.05" if beyond else
                        "; no lead (none below p 0.05 before the correction)") + ".")
    return "**Verdicts** (the sections below give every test). " + " ".join(parts)


def report_markdown(report: dict, title: str) -> str:
    tasks, rows = report["tasks"], report["rows"]
    lines = [f"# Campaign report: {title} (dev)", "",
             "Each cell: mean ± sample std (ddof=1) over seeds of each run's best dev evaluation (best by the task's "
             "primary metric; all the task's metrics from that same evaluation), x100. Average = mean over tasks of "
             "the task score (mean of its metrics); its ± is the std over seeds of each seed's Average, when every task "
             "has the same seeds; `-` when a method lacks a task.", ""]
    head = [_header(t, None) for t in tasks]
    lines += ["| Method | " + " | ".join(head) + " | Average | Seeds |", "|---" * (len(tasks) + 3) + "|"]
    for name, row in rows.items():
        cells = [format_cell(row["tasks"][t]["cells"]) if t in row["tasks"] else "-" for t in tasks]
        seeds = sorted({len(v["seeds"]) for v in row["tasks"].values()})
        avg = "-" if row["average"] is None else format_cell([{"mean": row["average"], "std": row["average_std"]}])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} | {'/'.join(map(str, seeds))} |")
    for group, picks in report["best_of"].items():
        lines += ["", f"`{group}` takes, per task, the member with the best mean primary dev metric over the seeds "
                  "its members share (a choice made on dev, as the paper's BEST rows): " + ", ".join(f"{t}: {m}" for t, m in picks.items()) + "."]
    lines += ["", verdict_summary(report)]
    lines += ["", "## The paper (BERT-base, dev, mean of 5 seeds)", "",
              "Same columns. 'Average (these tasks)' is computed as ours; 'Paper Average' is the published column "
              "(the mean of all 12 numbers of the row, over all 8 GLUE tasks).", "",
              "| Method | " + " | ".join(head) + " | Average (these tasks) | Paper Average |",
              "|---" * (len(tasks) + 3) + "|"]
    for pname, prow in report["paper"].items():
        cells = ["/".join(f"{v:.1f}" for v in prow["tasks"][t]) if t in prow["tasks"] else "-" for t in tasks]
        avg = f"{prow['average_these_tasks']:.1f}" if prow["average_these_tasks"] is not None else "-"
        lines.append(f"| {pname} | " + " | ".join(cells) + f" | {avg} | {prow['average_paper']:.1f} |")
    lines += per_seed_markdown(report)
    if report.get("times"):
        lines += ["", "## Training time (Table 3 style)", "",
                  "Mean over seeds of each finished run's training time (training steps only, evaluation excluded) "
                  "and seconds per step; ratios of seconds per step. These are the runs' own clocks: comparable "
                  "only between runs made under the same conditions, so the ratios compare runs on the same device "
                  "alone ('?': the records do not say).", "",
                  "| Task | Method | Device | Runs | Minutes | s/step | / standard | / smart |",
                  "|---|---|---|---|---|---|---|---|"]
        if any(t.get("clock") == "steps+eval" for rows_t in report["times"].values() for t in rows_t.values()):
            lines[-4] += (" A device marked 'clock with evaluations': those runs' tool timed their evaluations with "
                          "their steps, so their minutes and s/step are not comparable with the other rows' and get "
                          "no ratio.")
        cpu = any("cpu_s_per_step" in t for rows_t in report["times"].values() for t in rows_t.values())
        if cpu:  # the runs' CPU time too: a clock that other programs on the machine and pauses do not move
            lines[-4] += (" CPU s/step: the training process's CPU time per step (all its threads; CPU runs that "
                          "recorded it), which leaves out the time other programs took and pauses, with its ratios.")
            lines[-2] += " CPU s/step | CPU / standard | CPU / smart |"
            lines[-1] += "---|---|---|"
        for task, rows_t in report["times"].items():
            for name, t in rows_t.items():
                ratios = [f"{t[k]:.2f}" if k in t else "-" for k in ("/standard", "/smart")]
                line = (f"| {TASK_LABEL.get(task, task)} | {name} | {t['device']} | {t['runs']} | "
                        f"{t['minutes']:.1f} | {t['s_per_step']:.2f} | {ratios[0]} | {ratios[1]} |")
                if cpu:
                    line += " " + " | ".join(f"{t[k]:.2f}" if k in t else "-"
                                             for k in ("cpu_s_per_step", "cpu/standard", "cpu/smart")) + " |"
                lines.append(line)
    baselines = report.get("baselines")
    against = ("each row against the rows above it" if not baselines else
               "each row against " + ", ".join(f"`{b}`" for b in baselines) + " where that row is above it")
    lines += ["", "## Paired comparisons (runs with the same seed)", "",
              f"Rows in the report's order, {against}. 'Average' on each seed's mean of the task scores (as the "
              "Average column; seeds where both methods have every task; 'Average (tasks)' over only the tasks with "
              "the most common seeds, while other tasks lack seeds); per task on the primary metric. mean(A-B) x100; "
              f"sd = sample std of the per-seed differences; wins = seeds where A > B by more than {TIE} (smaller differences are ties and count for neither: archived results keep one decimal); p = "
              "paired t-test (scipy.stats.ttest_rel), shown with >= 2 seeds whose differences are not all equal. "
              + family_text(report["paired"], "this section's") + " " + size_text()]
    averages = [c for c in report["paired"] if c["task"] == "average"]
    per_task = [c for c in report["paired"] if c["task"] != "average"]
    for heading, group in (("On the Average", averages), ("Per task", per_task)):
        if not group:
            continue
        lines += ["", f"### {heading}", ""] + paired_header("Task")
        lines += [_paired_line(c, report["tasks"]) for c in group]
    lines += robustness_report.markdown(report.get("robustness", {}), report.get("times", {}))
    lines += ["", "## Runs not in the table", ""] + _missing_lines(report)
    return "\n".join(lines) + "\n"


def write_report(root: Path, results: list[RunResult], method_order: list[str] | None,
                 best_of: dict[str, list[str]] | None, baselines: list[str] | None = None,
                 not_started: list[str] | None = None, no_evaluation: list[str] | None = None,
                 title: str | None = None) -> str:
    """Write ROOT/report.md and ROOT/report.json, titled ``title`` (default: the root folder's name); returns the
    markdown."""
    report = build_report(results, method_order, best_of, baselines, not_started, no_evaluation)
    if not report["tasks"]:
        raise ConfigError(f"{root}: no finished runs to report")
    text = report_markdown(report, title or root.name)  # never where this machine keeps it
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(root / "report.md", text)
    atomic.write_text(root / "report.json", json.dumps(report, indent=2, default=str))
    return text
