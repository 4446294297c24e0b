"""The step costs that ship for campaign --dry_run: complete for every task and method, regenerated from the
archive they come from, and the estimate the documentation quotes is the one the dry run prints."""
from __future__ import annotations

import json
import re

from experiments.rapt import campaign
from experiments.rapt.step_costs import OUT, main, step_costs
from mt_dnn.perturbation import REGISTRY
from tests.conftest import REPO

RESULTS = REPO / "experiments" / "rapt" / "results"
TASKS = ("cola", "sst", "mrpc", "stsb", "rte")  # the tasks of the Table 2 grids


def test_the_shipped_file_regenerates_from_the_archive_and_the_benchmark():
    assert OUT == RESULTS / "step_costs.json"
    assert OUT.read_text(encoding="utf-8") == json.dumps(step_costs(), indent=1) + "\n"


def test_check_writes_nothing_and_out_writes_elsewhere(tmp_path, capsys):
    before = OUT.read_bytes()
    assert main(["--check"]) == 0 and "up to date" in capsys.readouterr().out
    stale = tmp_path / "costs.json"
    stale.write_text("{}\n")
    assert main(["--check", "--out", str(stale)]) == 1 and stale.read_text() == "{}\n"
    assert main(["--out", str(stale)]) == 0 and json.loads(stale.read_text()) == json.loads(before)
    assert OUT.read_bytes() == before


def test_every_task_has_a_cost_for_every_method():
    table = json.loads(OUT.read_text())
    for task in TASKS:
        assert set(REGISTRY) | {"rapt_shared"} <= set(table[task]), task
        assert all(v > 0 for v in table[task].values())
    # measured: the archive's CPU runs of RTE standard, training seconds / steps, mean over the seeds
    archive = json.loads((RESULTS / "archive_table2.json").read_text())
    rte = [r["train_seconds"] / r["steps"] for r in archive["runs"]
           if r["task"] == "rte" and r["method"] == "standard" and r.get("device", archive["device"]) == "cpu"]
    assert len(rte) == 3 and abs(table["rte"]["standard"] - sum(rte) / 3) < 5e-4
    # scaled: no CPU run of R3F, so CoLA's standard cost x R3F / standard in the CPU benchmark
    bench = json.loads((RESULTS / "speed_rte.json").read_text())["median_seconds"]
    assert abs(table["cola"]["r3f"] - table["cola"]["standard"] * bench["r3f"] / bench["standard"]) < 5e-4


def test_the_docs_quote_what_the_dry_run_of_the_full_grid_prints(tmp_path, capsys):
    grid = REPO / "experiments" / "rapt" / "grids" / "table2.yml"
    assert campaign.main(["--grid", str(grid), "--root", str(tmp_path / "root"), "--dry_run", "--jobs", "2",
                          "--step_costs", str(OUT)]) == 0
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if line.startswith("run ")]
    assert len(runs) == 120 and not [line for line in runs if " ? " in line or "unknown" in line]
    cpu, wall = re.search(r"CPU time of the 120 left: ([\d.]+ h); about ([\d.]+ h) of wall time", out).groups()
    page = (REPO / "docs" / "reproducing.md").read_text()
    assert f"about {wall} of wall time with `--jobs 2` ({cpu} of single-thread CPU time)" in page


def test_the_dry_run_uses_the_shipped_costs_only_for_the_runs_they_describe(tmp_path, capsys):
    grid = REPO / "experiments" / "rapt" / "grids" / "robustness.yml"
    table = json.loads(OUT.read_text())
    assert campaign.main(["--grid", str(grid), "--root", str(tmp_path / "a"), "--dry_run", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    # RTE: 3 epochs x ceil(2490 / 32) = 234 steps; SST-2: 3 x ceil(8000 / 32) = 750 (the grid's subsample)
    want = 234 * sum(table["rte"][m] for m in ("standard", "smart", "rapt", "rapt_shared", "r3f")) \
        + 750 * sum(table["sst"][m] for m in ("standard", "smart", "rapt", "rapt_shared", "r3f"))
    assert f"CPU time of the 10 left: {want / 3600:.1f} h" in out
    assert "shipped CPU cost rte.smart" in out
    # another encoder (or batch) is not what the shipped costs measured: no estimate rather than a wrong one
    assert campaign.main(["--grid", str(grid), "--root", str(tmp_path / "b"), "--dry_run", "--seeds", "1",
                          "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "shipped" not in out and "10 run(s) with no step cost" in out
