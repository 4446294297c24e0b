"""The recipe check: is another learning rate or a longer schedule clearly better than the recipe every method uses?

    python -m experiments.rapt.recipe --grid experiments/rapt/grids/recipe.yml \
        --archive experiments/rapt/results/archive_recipe.json \
        --noise experiments/rapt/results/archive_robustness.json experiments/rapt/results/archive_table2.json \
        [--default lr1e-4_ep3] [--out experiments/rapt/results/recipe.md]

A recipe grid runs one method at one seed per cell, each cell a learning rate and a number of epochs (its method
entry's ``lr`` and ``epochs``, or the grid's ``flags``). One seed cannot say on its own whether a cell beats the
default recipe, so each difference is set against the seed noise of the default recipe: the sample sd ``s`` over
seeds of the noise method's runs (``--noise_method``, default ``standard``) on the same task, from the noise
archive with the most of them. Two runs of the same recipe at different seeds then differ by about ``sqrt(2) s``;
a cell's difference from the default, ``d``, is tested as ``t = d / (sqrt(2) s)`` against Student's t with the
noise runs' ``n - 1`` degrees of freedom (two-sided), and Holm's correction runs over every (task, cell) test. A
cell is "better beyond seed noise" when its corrected p is below 0.05 and ``d > 0``. The detectable size is the
smallest true difference that test finds with 80 % power at p < 0.05. The two runs of a comparison share their
seed, which the test ignores: it treats them as two independent draws, as a new seed would be.

Each task's table gives every cell's score (the task's Table 2 metrics, x100, at its best dev evaluation, and the
epoch it came from) with the robustness sets' scores at that same evaluation (chosen on dev only); then the
tests. The verdict at the end names any recipe better beyond seed noise on every task, or says none is.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from data_utils import atomic
from data_utils.task_def import ConfigError
from experiments.rapt.archive import load_archives
from experiments.rapt.grid import load_grid
from experiments.rapt.paper import TASK_LABEL
from experiments.rapt.results import RunResult
from experiments.rapt.stats import ALPHA, POWER, detectable_by_t, holm, mean_std, task_score
from experiments.rapt.stats import verdict as paired_verdict
from mt_dnn.cli_utils import run_cli, setup_logging

logger = logging.getLogger(__name__)


def cell_settings(grid_path: str | Path) -> tuple[list[str], dict[str, tuple[float, int]]]:
    """The grid's tasks, and each method name's (lr, epochs): its own entry's, else the grid's ``flags``'."""
    grid = load_grid(grid_path)
    out = {}
    for name, flags in grid.methods.items():
        values = []
        for key in ("lr", "epochs"):
            value = flags.get(key, grid.flags.get(key))
            if value is None:
                raise ConfigError(f"{grid_path}: method {name} sets no {key} (nor do the grid's flags): a recipe "
                                  "cell needs both")
            values.append(value)
        out[name] = (float(values[0]), int(values[1]))
    return grid.tasks, out


def seed_noise(results: list[RunResult], task: str, method: str) -> tuple[int, float] | None:
    """(n, sample sd over seeds) of ``method``'s task scores on ``task`` in ``results``; None with < 2 runs."""
    scores = [task_score(r, task) for r in results if r.task == task and r.name == method]
    if len(scores) < 2:
        return None
    return len(scores), mean_std(scores)[1]


def load_noise(paths: list[str]) -> dict[str, list[RunResult]]:
    """Each noise archive's runs, read once, by path (in the order given)."""
    return {path: load_archives([path]) for path in paths}


def pick_noise(archives: dict[str, list[RunResult]], task: str, method: str) -> tuple[str, int, float] | None:
    """Of ``archives`` (path -> runs, :func:`load_noise`), the one with the most ``method`` runs on ``task`` (the
    first of a tie): (its path, n, sd)."""
    best = None
    for path, runs in archives.items():
        found = seed_noise(runs, task, method)
        if found and (best is None or found[0] > best[1]):
            best = (path, *found)
    return best


def compare(cells: dict[str, float], default: str, n: int, sd: float) -> dict[str, dict]:
    """Each cell but ``default`` against it: d = cell - default (x100 points), t = d / (sqrt(2) sd), two-sided p
    from Student's t with n - 1 degrees of freedom."""
    from scipy.stats import t as student

    se = math.sqrt(2) * sd
    out = {}
    for name, score in cells.items():
        if name == default:
            continue
        d = score - cells[default]
        out[name] = {"d": d, "t": d / se, "p_value": float(2 * student.sf(abs(d) / se, n - 1))}
    return out


def verdict(test: dict) -> str:
    """The paired tests' verdict (:func:`experiments.rapt.stats.verdict`, the same levels) with its direction:
    better or worse beyond seed noise, a lead or behind before the correction, or within seed noise."""
    plain = paired_verdict(test)
    if plain == "beyond seed noise":
        return ("better " if test["d"] > 0 else "worse ") + plain
    if plain == "lead (not after Holm)" and test["d"] <= 0:
        return "behind (not after Holm)"
    return plain


def number(value: float) -> str:
    """A learning rate as it is usually written: 5e-5, 1e-4, 2.5e-3."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def build(grid_path: str, archives: list[str], noise: list[str], default: str, noise_method: str) -> list[str]:
    """The recipe check's markdown lines."""
    tasks, settings = cell_settings(grid_path)
    if default not in settings:
        raise ConfigError(f"--default {default}: not a method of {grid_path} (methods: {', '.join(settings)})")
    results = [r for r in load_archives(archives) if r.name in settings]
    noise_runs = load_noise(noise)
    lrs = sorted({lr for lr, _ in settings.values()})
    epochs = sorted({e for _, e in settings.values()})
    by_cell = {(lr, e): name for name, (lr, e) in settings.items()}
    lines = ["# Recipe check", "",
             f"Grid `{grid_path}`, runs from {', '.join(f'`{a}`' for a in archives)}. Each cell: the task's score "
             "(x100) at the run's best dev evaluation, the epoch it came from (counted from 1), and the robustness "
             "sets' scores at that evaluation; `-`: not run (yet). Each other cell is tested against the default "
             f"recipe `{default}` ({_recipe(settings[default])}): d = cell - default, t = d / (sqrt(2) s), s the "
             f"sample sd over seeds of `{noise_method}` at the default recipe on that task; two-sided p from "
             "Student's t with n - 1 degrees of freedom (n: those seeds); p (Holm) over every test below. "
             f"detectable = the smallest true d this test finds with {POWER:.0%} power at p < {ALPHA}. The two "
             "runs share a seed, which the test ignores (it treats them as independent draws).", ""]
    tests: list[dict] = []
    untested: list[str] = []  # tasks without a default run or without seed noise
    for task in tasks:
        runs = {r.name: r for r in results if r.task == task}
        seeds = sorted({r.seed for r in results if r.task == task})
        if len(seeds) > 1:
            raise ConfigError(f"{task}: the recipe runs have seeds {seeds}: a recipe check compares one seed")
        label = TASK_LABEL.get(task, task)
        lines += [f"## {label}" + (f" (seed {seeds[0]})" if seeds else ""), "",
                  "| lr | " + " | ".join(f"{e} epochs" for e in epochs) + " |",
                  "|---|" + "---|" * len(epochs)]
        for lr in lrs:
            row = []
            for e in epochs:
                name = by_cell.get((lr, e))
                run = runs.get(name) if name else None
                row.append(_cell(run, task) if run else "-")
            lines.append(f"| {number(lr)} | " + " | ".join(row) + " |")
        lines.append("")
        scores = {name: task_score(run, task) for name, run in runs.items()}
        noise_found = pick_noise(noise_runs, task, noise_method)
        if default not in scores:
            lines += [f"The default recipe `{default}` has no finished run on {label}: nothing to test.", ""]
            untested.append(label)
            continue
        if noise_found is None:
            lines += [f"No noise archive has two or more `{noise_method}` runs on {label}: nothing to test.", ""]
            untested.append(label)
            continue
        path, n, sd = noise_found
        size = detectable_by_t(n - 1, math.sqrt(2) * sd)
        lines += [f"Seed noise: `{noise_method}` at the default recipe, {n} seeds in `{path}`: s = {sd:.2f} "
                  f"(so two seeds differ by about {math.sqrt(2) * sd:.2f}); detectable d = {size:.1f}.", ""]
        for name, test in compare(scores, default, n, sd).items():
            tests.append({"label": label, "name": name, "score": scores[name],
                          "default": scores[default], **test})
    if tests:
        for test, adjusted in zip(tests, holm([t["p_value"] for t in tests])):
            test["p_holm"] = adjusted
        lines += ["## Against the default recipe", "",
                  "| Task | recipe | lr | epochs | score | default | d | t | p | p (Holm) | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in tests:
            lr, e = settings[t["name"]]
            lines.append(f"| {t['label']} | {t['name']} | {number(lr)} | {e} | {t['score']:.1f} | {t['default']:.1f} "
                         f"| {t['d']:+.1f} | {t['t']:+.2f} | {t['p_value']:.3f} | {t['p_holm']:.3f} | {verdict(t)} |")
        lines += ["", _summary(tests, tasks, untested, default)]
    return lines


def _recipe(setting: tuple[float, int]) -> str:
    return f"lr {number(setting[0])}, {setting[1]} epochs"


def _cell(run: RunResult, task: str) -> str:
    best = run.best
    sets = [f"{name} {value * 100:.1f}" for split in best.robustness.values()
            for name, metrics in split.items() for value in list(metrics.values())[:1]]
    return f"{task_score(run, task):.1f} (ep {best.epoch + 1})" + (f"; {', '.join(sets)}" if sets else "")


def _summary(tests: list[dict], tasks: list[str], untested: list[str], default: str) -> str:
    """Which recipes are better beyond seed noise on every task of the grid, or none; which tasks were not tested."""
    better = {}
    for t in tests:
        better.setdefault(t["name"], set())
        if verdict(t) == "better beyond seed noise":
            better[t["name"]].add(t["label"])
    labels = {TASK_LABEL.get(t, t) for t in tasks}
    everywhere = [name for name, won in better.items() if won == labels]
    somewhere = [f"{name} ({', '.join(sorted(won))})" for name, won in better.items() if won and won != labels]
    head = (f"Recipes better than `{default}` beyond seed noise on every task: {', '.join(everywhere)}."
            if everywhere else f"No recipe is better than `{default}` beyond seed noise on every task.")
    if somewhere:
        head += f" Better on some tasks only: {'; '.join(somewhere)}."
    if untested:
        head += f" Not tested (no default run or no seed noise): {', '.join(untested)}."
    return head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.recipe",
                                description="A recipe grid's cells (lr x epochs, one seed) against the default "
                                            "recipe, measured against the default's seed noise.")
    p.add_argument("--grid", required=True, help="the recipe grid (each method: lr and epochs)")
    p.add_argument("--archive", nargs="+", required=True, help="the recipe runs' archive(s)")
    p.add_argument("--noise", nargs="+", required=True,
                   help="archives with several seeds of --noise_method at the default recipe (per task, the one "
                        "with the most seeds is used)")
    p.add_argument("--noise_method", default="standard", help="the method name in the noise archives")
    p.add_argument("--default", default="lr1e-4_ep3", help="the grid's method name of the default recipe")
    p.add_argument("--out", default="experiments/rapt/results/recipe.md")
    args = p.parse_args(argv)
    setup_logging()
    for path in [args.grid, *args.archive, *args.noise]:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such file")
    lines = build(args.grid, args.archive, args.noise, args.default, args.noise_method)
    atomic.write_text(args.out, "\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
