"""The robustness part of a campaign report: dev against robustness-set (AdvGLUE) accuracy per method, the gap
between them, paired tests on both, and the smallest paired differences the seeds could detect.

Every number comes from each run's best dev evaluation (the epoch chosen on dev, as in Table 2); the
robustness score is the one logged at that same evaluation, so nothing is chosen on the robustness set.
"""
from __future__ import annotations

import numpy as np

from experiments.rapt.paper import TASK_LABEL
from experiments.rapt.results import Evaluation, RunResult
from experiments.rapt.stats import adjust, family_text, paired, paired_cells, paired_header, size, size_text


def _scores(run: RunResult, evaluation: Evaluation | None = None) -> tuple[float, dict[str, float]] | None:
    """(dev primary x100, {set: primary x100}) at ``evaluation`` (default: the run's best dev evaluation), each
    set's score the mean over the dev splits that scored it; None where it scored no robustness set."""
    evaluation = run.best if evaluation is None else evaluation
    if evaluation is None or not evaluation.robustness:
        return None
    sets: dict[str, list[float]] = {}
    for split_sets in evaluation.robustness.values():
        for name, metrics in split_sets.items():
            sets.setdefault(name, []).append(metrics[run.metric] * 100)
    return evaluation.primary * 100, {k: float(np.mean(v)) for k, v in sets.items()}


def _end_of_epochs(run: RunResult) -> dict[int, Evaluation]:
    """Epoch -> the run's last evaluation in that epoch (its end-of-epoch one)."""
    out: dict[int, Evaluation] = {}
    for e in run.evaluations:
        out[e.epoch] = e
    return out


def _paired_tests(task: str, set_name: str, rows: dict[str, dict[int, tuple[float, float]]], names: list[str],
                  baselines: list[str]) -> list[dict]:
    """Paired tests of each row against each of ``baselines`` above it in ``names``, on dev and on the set, over
    their common seeds, with the detectable difference. ``rows``: method -> seed -> (dev, set score)."""
    out = []
    order = [n for n in names if n in rows]
    for i, a in enumerate(order):
        for b in order[:i]:
            if b not in baselines:
                continue
            seeds = sorted(set(rows[a]) & set(rows[b]))
            if not seeds:
                continue
            for what, k in (("dev", 0), (set_name, 1)):
                c = paired(task, a, b, seeds, np.array([rows[a][s][k] for s in seeds]),
                           np.array([rows[b][s][k] for s in seeds]))
                c["on"] = what
                out.append(c)
    return out


def _by_epoch(task: str, set_name: str, runs: dict[str, dict[int, RunResult]], names: list[str],
              baselines: list[str]) -> dict | None:
    """From the runs that hold every dev evaluation (``RunResult.history``): per method and epoch, dev and set
    score (mean and sd over seeds, end-of-epoch evaluations), and the paired tests at each run's last epoch (a
    fixed rule: chosen on neither dev nor the set). None when no run has its history, or all end in one epoch."""
    per: dict[str, dict[int, dict[int, tuple[float, float]]]] = {}  # method -> epoch -> seed -> (dev, set)
    last: dict[str, dict[int, tuple[float, float]]] = {}
    for name in names:
        for seed, run in sorted(runs.get(name, {}).items()):
            if not run.history:
                continue
            epochs = _end_of_epochs(run)
            for epoch, evaluation in sorted(epochs.items()):
                scored = _scores(run, evaluation)
                if scored is not None and set_name in scored[1]:
                    per.setdefault(name, {}).setdefault(epoch, {})[seed] = (scored[0], scored[1][set_name])
            if name in per and max(epochs) in per[name] and seed in per[name][max(epochs)]:
                last.setdefault(name, {})[seed] = per[name][max(epochs)][seed]
    epochs = sorted({e for by_epoch in per.values() for e in by_epoch})
    if len(epochs) < 2:
        return None
    rows = {}
    for name, by_epoch in per.items():
        rows[name] = {"seeds": sorted({s for seeds in by_epoch.values() for s in seeds}),
                      "dev": {str(e): _ms(np.array([v[0] for v in by_epoch[e].values()])) for e in by_epoch},
                      "set": {str(e): _ms(np.array([v[1] for v in by_epoch[e].values()])) for e in by_epoch},
                      "n": {str(e): len(by_epoch[e]) for e in by_epoch}}
    return {"epochs": epochs, "rows": rows, "paired_last": _paired_tests(task, set_name, last, names, baselines)}


def build(by: dict[str, dict[str, dict[int, RunResult]]], names: list[str], baselines: list[str]) -> dict:
    """``by``: method -> task -> seed -> finished run. Per task and robustness set: each method's rows (dev,
    set score and gap dev - set, mean and sd over seeds) and the paired tests of every method against each of
    ``baselines`` above it, on dev and on the set, with the detectable difference."""
    out: dict[str, dict] = {}
    for name in names:
        for task, runs in by.get(name, {}).items():
            for seed, run in sorted(runs.items()):
                scored = _scores(run)
                if scored is None:
                    continue
                dev, sets = scored
                for set_name, value in sets.items():
                    cell = out.setdefault(task, {}).setdefault(set_name, {"rows": {}, "paired": []})
                    cell["rows"].setdefault(name, {})[seed] = (dev, value)
    for task, by_set in out.items():
        for set_name, cell in by_set.items():
            rows = cell["rows"]
            summary = {}
            for name, per_seed in rows.items():
                devs = np.array([v[0] for v in per_seed.values()])
                sets = np.array([v[1] for v in per_seed.values()])
                summary[name] = {"seeds": sorted(per_seed), "dev": _ms(devs), "set": _ms(sets),
                                 "gap": _ms(devs - sets)}
            cell["summary"] = summary
            cell["paired"] = _paired_tests(task, set_name, rows, names, baselines)
            cell["rows"] = {n: {str(s): list(v) for s, v in r.items()} for n, r in rows.items()}
            history = _by_epoch(task, set_name, {n: by.get(n, {}).get(task, {}) for n in names}, names, baselines)
            if history is not None:
                cell["by_epoch"] = history
    # two families, each over every task and set: the tests at the dev-chosen evaluation, and those at the last epoch
    cells = [cell for by_set in out.values() for cell in by_set.values()]
    for family in ([c for cell in cells for c in cell["paired"]],
                   [c for cell in cells if "by_epoch" in cell for c in cell["by_epoch"]["paired_last"]]):
        adjust(family)
        size(family)
    return out


def _ms(values: np.ndarray) -> list[float | None]:
    return [float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None]


def mean_sd(ms: list[float | None]) -> str:
    return f"{ms[0]:.1f}" + (f" ± {ms[1]:.1f}" if ms[1] is not None else "")


def _cost(times: dict, task: str, name: str, cpu: bool = False) -> str:
    """'s/step | / standard' cells of a method's runs of a task (the report's training times; '-' where the runs
    did not record their clock, ran on several devices, or standard did not run on the same device); with
    ``cpu``, the CPU-time cells ('CPU s/step | CPU / standard')."""
    row = times.get(task, {}).get(name)
    value, ratio = (row or {}).get("cpu_s_per_step" if cpu else "s_per_step"), (row or {}).get(
        "cpu/standard" if cpu else "/standard")
    cells = [f"{x:.2f}" if x is not None else "-" for x in (value, ratio)]
    if value is not None and row.get("clock") == "steps+eval":
        cells[0] += " (with evaluations)"  # a clock of another kind than the section's: see Training time
    return " | ".join(cells)


def markdown(section: dict, times: dict | None = None) -> list[str]:
    """The report's robustness section (empty when no run logged a robustness set); ``times``: the report's
    training times (task -> method -> s_per_step, /standard), for each method's cost per step."""
    if not section:
        return []
    tests = [c for by_set in section.values() for cell in by_set.values() for c in cell["paired"]]  # one family
    cpu_clock = any("cpu_s_per_step" in row for rows in (times or {}).values() for row in rows.values())
    intro = ("At each run's best dev evaluation (chosen on dev only): the dev primary metric and the robustness "
             "set's (AdvGLUE dev: adversarial, human-checked GLUE dev examples), x100, mean ± sd over seeds; gap = "
             "dev - set (how much accuracy a method loses under attack). Paired tests as above, on the same seeds. "
             "s/step: the runs' own clocks, mean over seeds (training steps only), and its ratio to standard's on the "
             "same device (see Training time).")
    if cpu_clock:
        intro += (" CPU s/step instead where a task's CPU runs recorded their process's CPU time (not moved by "
                  "other programs on the machine or by pauses).")
    intro += (" " + family_text(tests, "this section's dev-chosen") + " " + size_text()
              + " The tests at the last epoch (by-epoch tables) are a family of their own.")
    lines = ["", "## Robustness (dev and robustness sets)", "", intro]
    for task, by_set in section.items():
        for set_name, cell in by_set.items():
            label = TASK_LABEL.get(task, task)
            # the runs' CPU time where they recorded it: unlike the wall clock, not moved by other programs
            cpu = any("cpu_s_per_step" in row for row in (times or {}).get(task, {}).values())
            clock = "CPU s/step | CPU / standard" if cpu else "s/step | / standard"
            lines += ["", f"### {label}: dev and {set_name}", "",
                      f"| Method | Seeds | dev | {set_name} | gap (dev - {set_name}) | {clock} |",
                      "|---|---|---|---|---|---|---|"]
            for name, s in cell["summary"].items():
                lines.append(f"| {name} | {len(s['seeds'])} | {mean_sd(s['dev'])} | {mean_sd(s['set'])} | "
                             f"{mean_sd(s['gap'])} | {_cost(times or {}, task, name, cpu)} |")
            lines += _paired_table(cell["paired"])
            if "by_epoch" in cell:
                lines += _by_epoch_lines(label, set_name, cell["by_epoch"])
    return lines


def _paired_table(tests: list[dict]) -> list[str]:
    if not tests:
        return []
    return [""] + paired_header("On") + [f"| {c['on']} " + paired_cells(c) for c in tests]


def _by_epoch_lines(label: str, set_name: str, history: dict) -> list[str]:
    """The by-epoch table (dev and set score per epoch, mean ± sd over seeds) and the paired tests at the last
    epoch."""
    epochs = history["epochs"]
    heads = [f"dev ep {e + 1}" for e in epochs] + [f"{set_name} ep {e + 1}" for e in epochs]
    lines = ["", f"#### {label}: dev and {set_name} by epoch", "",
             f"Runs whose every dev evaluation is recorded (run folders, and archive entries with their "
             f"evaluations): each epoch's last evaluation, x100, mean ± sd over seeds (a cell over fewer seeds than "
             f"the row says its count in brackets). Below, the paired tests at each run's last epoch: a fixed rule, "
             f"chosen on neither dev nor {set_name}, beside the dev-chosen evaluation above (p (Holm) over "
             f"the {history['paired_last'][0]['family'] if history['paired_last'] else 0} tests at the last epoch "
             f"of every task and set).", "",
             "| Method | Seeds | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for name, row in history["rows"].items():
        cells = []
        for what in ("dev", "set"):
            for e in epochs:
                ms, n = row[what].get(str(e)), row["n"].get(str(e), 0)
                cells.append("-" if ms is None else mean_sd(ms) + (f" ({n})" if n != len(row["seeds"]) else ""))
        lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return lines + _paired_table(history["paired_last"])
