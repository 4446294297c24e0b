"""Archived results (runs whose folders are gone) enter the report; a run folder always wins over its archive."""
from __future__ import annotations

import json

import pytest

from data_utils.task_def import ConfigError
from experiments.rapt import campaign
from experiments.rapt.archive import load_archive, with_archive
from experiments.rapt.results import scan_results
from tests.test_campaign_golden import _grid, write_fake_runs

SHIPPED = campaign.__file__.replace("campaign.py", "results/archive_table2.json")


def _archive(path, runs):
    path.write_text(json.dumps({"source": "test", "runs": runs}))
    return path


def test_archived_runs_fill_missing_cells_and_folders_win(tmp_path):
    root = tmp_path / "root"
    write_fake_runs(root, _grid(tmp_path / "grid.yml"))
    real = {(r.task, r.name, r.seed): r for r in scan_results(root) if r.finished}
    arch = _archive(tmp_path / "a.json", [
        {"task": "rte", "method": "standard", "seed": 1, "epoch": 0, "metrics": {"acc": 0.1}},  # a folder has it
        {"task": "rte", "method": "old_smart", "seed": 1, "epoch": 2, "metrics": {"acc": 0.612},
         "train_seconds": 600.0, "steps": 234},
        {"task": "rte", "method": "old_smart", "seed": 2, "epoch": 1, "metrics": {"acc": 0.588}}])
    merged = with_archive(scan_results(root), load_archive(arch))
    by = {(r.task, r.name, r.seed): r for r in merged}
    assert by[("rte", "standard", 1)].best.primary == real[("rte", "standard", 1)].best.primary != 0.1
    assert by[("rte", "old_smart", 1)].best.primary == pytest.approx(0.612)
    assert by[("rte", "old_smart", 1)].steps == 234 and by[("rte", "old_smart", 2)].finished
    assert campaign.main(["--root", str(root), "--report", "--archive", str(arch)]) == 0
    table = (root / "table2.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| old_smart |"))
    assert "60.0 ± 1.7" in row  # mean and sample std of 61.2 and 58.8


@pytest.mark.parametrize("runs, message", [
    ([{"task": "rte", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}}], "needs task, method"),
    ([{"task": "nope", "method": "m", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}}], "unknown task"),
    ([{"task": "mrpc", "method": "m", "seed": 1, "epoch": 0, "metrics": {"f1": 0.5}}], "primary metric 'acc'"),
    ([{"task": "rte", "method": "m", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}}] * 2, "archived twice"),
])
def test_malformed_archive_is_one_line_error(tmp_path, runs, message):
    with pytest.raises(ConfigError, match=message):
        load_archive(_archive(tmp_path / "a.json", runs))
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the archive"):
        load_archive(tmp_path / "b.json")


def test_shipped_archive_loads_and_matches_its_report():
    runs = {(r.task, r.name, r.seed): r for r in load_archive(SHIPPED)}
    assert len(runs) == 55
    assert runs[("mrpc", "smart_batchmean", 1)].best.metrics["dev"] == {"acc": 0.819, "f1": 0.875}
    assert runs[("cola", "rapt", 3)].best.primary == pytest.approx(0.212)
