"""The campaign's outputs on a fixed fake runs tree are byte-identical to the stored golden files.

The tree is made of run folders shaped like real ones (``flags.json``, ``config.json``, ``metrics.jsonl`` with
dev records per epoch and a final train record): five tasks (MNLI with its two dev splits), four methods, three
seeds, a method limited to two tasks, a best-of row, missing cells and unfinished runs. Every number comes from
generators seeded by strings, so the same tree is written on every machine. The golden files
(``tests/golden/campaign_*``) were rendered by the campaign code before it was split into modules; any change to
a table, a figure, a p-value's rounding or the dry run's estimates shows here as a diff.

These are snapshot tests: they compare the code's output with its own earlier output, so they cannot tell a
right number from a wrong one. ``test_report_table_recomputed_from_the_run_folders`` recomputes the report's
main table from the run folders with numpy alone, beside them.

``MT_DNN_UPDATE_GOLDEN=1`` rewrites the golden files (only for a deliberate change of the outputs).
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
import yaml

from experiments.rapt import campaign, grid as grid_mod

GOLDEN = Path(__file__).resolve().parent / "golden"
TASKS = ["rte", "mrpc", "stsb", "cola", "mnli"]
SEEDS = [1, 2, 3]
# (method name, grid flags); rapt_eta1.5 runs on rte and mrpc only
METHODS = {"standard": {"method": "standard"}, "smart": {"method": "smart"},
           "rapt": {"method": "rapt", "rapt_eta": 2.0},
           "rapt_eta1.5": {"method": "rapt", "rapt_eta": 1.5, "tasks": ["rte", "mrpc"]}}
BASE = {"rte": 0.56, "mrpc": 0.80, "stsb": 0.86, "cola": 0.27, "mnli": 0.70}
OFFSET = {"standard": 0.0, "smart": 0.006, "rapt": -0.004, "rapt_eta1.5": 0.003}
COST = {"standard": 1.9, "smart": 5.3, "rapt": 3.8, "rapt_eta1.5": 3.8}  # seconds per step
STEPS_PER_EPOCH = {"rte": 78, "mrpc": 115, "stsb": 180, "cola": 268, "mnli": 40}
MISSING = {("cola", "smart", 3), ("rte", "rapt_eta1.5", 3)}
UNFINISHED = {("mnli", "rapt", 2), ("stsb", "smart", 3)}


def _grid(path: Path) -> Path:
    path.write_text(yaml.safe_dump(
        {"tasks": TASKS, "seeds": SEEDS, "flags": {"epochs": 3, "lr": 1.0e-4, "max_train_samples": 2000},
         "methods": METHODS, "best_of": {"rapt_best_eta": ["rapt_eta1.5", "rapt"]}}, sort_keys=False))
    return path


def _metrics(task: str, rng: random.Random, level: float) -> dict[str, dict[str, float]]:
    """split name -> metrics of one evaluation, as the trainer writes them (fractions, 4 decimals here)."""
    def val(spread: float = 0.03) -> float:
        return round(min(max(level + rng.uniform(-spread, spread), 0.0), 1.0), 4)

    if task == "mrpc":
        return {"dev": {"acc": val(), "f1": val() + 0.06}}
    if task == "stsb":
        return {"dev": {"pearson": val(0.01), "spearman": val(0.01)}}
    if task == "cola":
        return {"dev": {"mcc": val(0.04), "acc": round(0.45 + level, 4)}}
    if task == "mnli":
        return {"dev_matched": {"acc": val()}, "dev_mismatched": {"acc": val()}}
    return {"dev": {"acc": val()}}


def write_fake_runs(root: Path, grid_file: Path) -> list:
    """The grid's run folders, filled as finished (or unfinished) runs would leave them. Returns the plan."""
    runs = grid_mod.plan_runs(grid_mod.load_grid(grid_file), root)
    for run in runs:
        if (run.task, run.name, run.seed) in MISSING:
            continue
        rng = random.Random(f"{run.task}/{run.name}/{run.seed}")
        run.folder.mkdir(parents=True)
        (run.folder / "flags.json").write_text(json.dumps(
            {"task": run.task, "method_name": run.name, "seed": run.seed, "hash": run.folder.name.split("-")[-1],
             "identity": run.identity, "flags": run.flags}, indent=2, default=str))
        options = {k.split("_", 1)[1]: v for k, v in run.identity.items() if k.startswith(f"{run.method}_")}
        (run.folder / "config.json").write_text(json.dumps(
            {"tasks": run.task, "method": run.method, "seed": run.seed, "epochs": 3, "lr": 1e-4,
             "max_train_samples": 2000, "batch_size": 32, "method_options": options, "world_size": 1}, indent=2))
        per_epoch = STEPS_PER_EPOCH[run.task]
        epochs = 2 if (run.task, run.name, run.seed) in UNFINISHED else 3
        seconds, records = 0.0, []
        for epoch in range(epochs):
            seconds += per_epoch * COST[run.name] * rng.uniform(0.9, 1.1)
            level = BASE[run.task] + OFFSET[run.name] + 0.01 * epoch
            for split, metrics in _metrics(run.task, rng, level).items():
                records.append({"epoch": epoch, "step": per_epoch * (epoch + 1), "task": run.task, "split": "dev",
                                "split_name": split, "method": run.method, "seed": run.seed,
                                "train_seconds": round(seconds, 3), "metrics": metrics})
        if epochs == 3:
            records.append({"epoch": 2, "step": 3 * per_epoch, "task": run.task, "split": "train",
                            "method": run.method, "seed": run.seed, "train_seconds": round(seconds, 3),
                            "steps": 3 * per_epoch, "loss": round(rng.uniform(0.3, 0.6), 4),
                            "reg_loss": 0.0 if run.method == "standard" else round(rng.uniform(0.001, 0.01), 4)})
        (run.folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return runs


def _normalise(text: str, root: Path) -> str:
    """Temporary paths and folder hashes (which follow mt_dnn.train's option set) become fixed words."""
    text = text.replace(str(root), "ROOT")
    return re.sub(r"/s(\d+)-[0-9a-f]{8}\b", r"/s\1-HASH", text)


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MT_DNN_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing (MT_DNN_UPDATE_GOLDEN=1 writes it)"
    assert text == path.read_text(), f"{name} differs from the golden file {path}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("golden")
    grid = _grid(base / "grid.yml")
    root = base / "camp"
    runs = write_fake_runs(root, grid)
    return grid, root, runs


def test_report_of_every_run_under_the_root_is_unchanged(tree, capsys):
    """Snapshot: the report equals the stored golden file."""
    grid, root, _ = tree
    assert campaign.main(["--root", str(root), "--report"]) == 0
    printed = capsys.readouterr().out
    assert printed == (root / "report.md").read_text()
    _check("campaign_report_root.md", _normalise(printed, root))
    _check("campaign_report_root.json", _normalise((root / "report.json").read_text(), root))


def test_report_of_the_grid_with_its_best_of_row_is_unchanged(tree, capsys):
    """Snapshot: the report equals the stored golden file."""
    grid, root, _ = tree
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--report"]) == 0
    printed = capsys.readouterr().out
    assert "rapt_best_eta" in printed and "MNLI-m/mm Acc" in printed
    _check("campaign_report_grid.md", _normalise(printed, root))
    _check("campaign_report_grid.json", _normalise((root / "report.json").read_text(), root))


def test_dry_run_plan_and_estimates_are_unchanged(tmp_path, capsys):
    """Snapshot: two grids on one root: done, resume and run cells, and every source of a step cost (measured by
    name, measured by cost key, --step_costs per task and for every task, scaled from standard, unknown)."""
    grid, root = _grid(tmp_path / "grid.yml"), tmp_path / "camp"
    write_fake_runs(root, grid)
    extra = tmp_path / "extra.yml"
    extra.write_text(yaml.safe_dump(
        {"tasks": ["rte", "mrpc", "sst"], "seeds": [1], "flags": {"epochs": 3, "lr": 1.0e-4, "max_train_samples": 2000},
         "methods": {"standard": {"method": "standard"},
                     "rapt_shared": {"method": "rapt", "rapt_share_lower_layers": True},
                     "rapt_shared_eta1.5": {"method": "rapt", "rapt_share_lower_layers": True, "rapt_eta": 1.5,
                                            "tasks": ["rte"]},
                     "r3f": {"method": "r3f"}, "smart_k2": {"method": "smart", "smart_k": 2}}}, sort_keys=False))
    # one measured run of the shared-lower-layers path, on RTE: 2.9 s per step
    [measured] = [r for r in grid_mod.plan_runs(grid_mod.load_grid(extra), root)
                  if (r.task, r.name) == ("rte", "rapt_shared")]
    measured.folder.mkdir(parents=True)
    (measured.folder / "flags.json").write_text(json.dumps(
        {"task": "rte", "method_name": "rapt_shared", "seed": 1, "identity": measured.identity}, default=str))
    (measured.folder / "metrics.jsonl").write_text(json.dumps(
        {"split": "train", "train_seconds": 2.9 * 234, "steps": 234, "loss": 0.5, "reg_loss": 0.01}) + "\n")
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"*": {"r3f": 2.2}, "sst": {"standard": 2.5}}))
    assert campaign.main(["--grid", str(grid), str(extra), "--root", str(root), "--dry_run", "--jobs", "2",
                          "--step_costs", str(costs)]) == 0
    out = capsys.readouterr().out
    for source in ("to resume", "measured rapt (1)", "--step_costs *.r3f", "--step_costs sst.standard",
                   "standard x", "unknown"):
        assert source in out, source
    _check("campaign_dry_run.txt", _normalise(out, root))


# ---- the main table recomputed independently ------------------------------------------------------------

SHOWN = {"mnli": ("acc", ["dev_matched", "dev_mismatched"], ["acc"]), "rte": ("acc", ["dev"], ["acc"]),
         "mrpc": ("acc", ["dev"], ["acc", "f1"]), "cola": ("mcc", ["dev"], ["mcc"]),
         "stsb": ("pearson", ["dev"], ["pearson", "spearman"])}  # task: primary, splits, metrics shown


def _best_shown(folder: Path, task: str) -> list[float] | None:
    """The shown metrics (x100) of a finished run's best evaluation: highest mean over the splits of the primary
    metric, the earliest on ties. None for an unfinished run (no final train record)."""
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    if not any(r["split"] == "train" for r in records):
        return None
    primary, splits, shown = SHOWN[task]
    evals: dict = {}
    for r in records:
        if r["split"] == "dev":
            evals.setdefault((r["epoch"], r["step"]), {})[r["split_name"]] = r["metrics"]
    best = None
    for metrics in evals.values():
        score = sum(metrics[s][primary] for s in splits) / len(splits)
        if best is None or score > best[0]:
            best = (score, [100 * metrics[s][m] for s in splits for m in shown])
    return best[1]


def test_report_table_recomputed_from_the_run_folders(tree, capsys):
    """Each cell of the report's main table: mean and sample sd (ddof=1) over seeds of each finished run's best
    evaluation, recomputed here from the metrics.jsonl files; the Seeds column counts them."""
    import numpy as np

    from tests.test_results_tables import _numbers, _table

    grid, root, runs = tree
    assert campaign.main(["--root", str(root), "--report"]) == 0
    rows = {r[0]: r for r in _table(capsys.readouterr().out, "| Method | MNLI-m/mm Acc")}
    assert set(rows) == set(METHODS)
    for method in METHODS:
        counts = set()
        for col, task in enumerate(["mnli", "rte", "mrpc", "cola", "stsb"], start=1):
            per_seed = [_best_shown(r.folder, task) for r in runs
                        if (r.task, r.name) == (task, method) and r.folder.exists()]
            per_seed = np.array([v for v in per_seed if v is not None])
            if not len(per_seed):
                assert rows[method][col] == "-"
                continue
            counts.add(len(per_seed))
            expected = []
            for values in per_seed.T:
                expected += [values.mean()] + ([values.std(ddof=1)] if len(values) > 1 else [])
            got = _numbers(rows[method][col])
            assert np.allclose(got, expected, atol=0.05 + 1e-9), (method, task, rows[method][col], expected)
        assert rows[method][-1] == (f"{min(counts)}/{max(counts)}" if len(counts) > 1 else str(min(counts)))
