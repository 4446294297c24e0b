"""Archived results (runs whose folders are gone) enter the report; a run folder always wins over its archive."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_utils.task_def import ConfigError
from experiments.rapt import campaign
from experiments.rapt.archive import load_archive, with_archive
from experiments.rapt.results import scan_results
from mt_dnn.cli_utils import run_cli
from tests.test_campaign_golden import _grid, write_fake_runs
from tests.test_results_tables import _table

SHIPPED = campaign.__file__.replace("campaign.py", "results/archive_table2.json")
GRIDS = Path(campaign.__file__).parent / "grids"


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
        {"task": "rte", "method": "old_smart", "seed": 2, "epoch": None, "metrics": {"acc": 0.588}}])
    merged = with_archive(scan_results(root), load_archive(arch))
    by = {(r.task, r.name, r.seed): r for r in merged}
    assert by[("rte", "standard", 1)].best.primary == real[("rte", "standard", 1)].best.primary != 0.1
    assert by[("rte", "old_smart", 1)].best.primary == pytest.approx(0.612)
    assert by[("rte", "old_smart", 1)].steps == 234 and by[("rte", "old_smart", 2)].finished
    assert campaign.main(["--root", str(root), "--report", "--archive", str(arch)]) == 0
    table = (root / "report.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| old_smart |"))
    assert "60.0 ± 1.7" in row  # mean and sample std of 61.2 and 58.8
    per_seed = next(line for line in table.splitlines() if line.startswith("| old_smart | 61.2"))
    assert per_seed.startswith("| old_smart | 61.2 (ep 3) | 58.8 (ep ?) |")  # an epoch the archive lacks


def test_several_archives_count_together_and_a_cell_in_two_of_them_is_refused(tmp_path, capsys):
    """A study's CPU cells in one archive and its GPU cells in another: the report reads both files."""
    root = tmp_path / "root"
    write_fake_runs(root, _grid(tmp_path / "grid.yml"))
    cpu = _archive(tmp_path / "cpu.json", [
        {"task": "rte", "method": "old_smart", "seed": 1, "epoch": 2, "metrics": {"acc": 0.612}}])
    gpu = _archive(tmp_path / "gpu.json", [
        {"task": "rte", "method": "old_smart", "seed": 2, "epoch": 0, "metrics": {"acc": 0.588},
         "device": "cuda (NVIDIA H100 80GB HBM3)"}])
    assert campaign.main(["--root", str(root), "--report", "--archive", str(cpu), str(gpu)]) == 0
    row = next(line for line in (root / "report.md").read_text().splitlines() if line.startswith("| old_smart |"))
    assert "60.0 ± 1.7" in row  # both files' cells: mean and sample std of 61.2 and 58.8
    twice = _archive(tmp_path / "twice.json", [
        {"task": "rte", "method": "old_smart", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}}])
    assert run_cli(campaign.main, ["--root", str(root), "--report", "--archive", str(cpu), str(twice)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {twice}: rte/old_smart seed 1 is archived in {cpu} too")


def test_the_grid_report_lists_the_cells_it_lacks_and_says_when_none_are(tmp_path, capsys):
    """Cells of the grid with no folder and no archived result are 'not started'; an archived result counts."""
    root, grid = tmp_path / "root", _grid(tmp_path / "grid.yml")
    runs = write_fake_runs(root, grid)  # cola/smart/s3 and rte/rapt_eta1.5/s3 missing; two unfinished
    arch = _archive(tmp_path / "a.json", [{"task": "cola", "method": "smart", "seed": 3, "epoch": 1,
                                           "metrics": {"mcc": 0.3}}])
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--report", "--archive", str(arch)]) == 0
    report = json.loads((root / "report.json").read_text())
    assert report["not_started"] == ["rte/rapt_eta1.5/s3"]
    table = (root / "report.md").read_text()
    assert "- Not started: 1 run(s) of the grid: rte/rapt_eta1.5/s3." in table
    assert "- Left out (not finished): 2 run(s): mnli/rapt/s2-" in table
    assert "Every run of the grid" not in table
    # a run that has started but not yet evaluated is unfinished, not "not started"
    started = next(r for r in runs if (r.task, r.name, r.seed) == ("rte", "rapt_eta1.5", 3))
    started.folder.mkdir(parents=True)
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--report", "--archive", str(arch)]) == 0
    report = json.loads((root / "report.json").read_text())
    assert report["not_started"] == [] and started.folder.as_posix() in report["unfinished"]
    assert "- Left out (not finished): 3 run(s): " in (root / "report.md").read_text()
    started.folder.rmdir()

    unfinished = [r for r in runs if (r.task, r.name, r.seed) in {("mnli", "rapt", 2), ("stsb", "smart", 3)}]
    for run in unfinished:
        shutil.rmtree(run.folder)
    done = [{"task": t, "method": m, "seed": s, "epoch": 2, "metrics": metrics} for t, m, s, metrics in (
        ("cola", "smart", 3, {"mcc": 0.3}), ("rte", "rapt_eta1.5", 3, {"acc": 0.6}),
        ("mnli", "rapt", 2, {"dev_matched": {"acc": 0.7}, "dev_mismatched": {"acc": 0.72}}),
        ("stsb", "smart", 3, {"pearson": 0.8, "spearman": 0.8}))]
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--report", "--archive",
                          str(_archive(tmp_path / "all.json", done))]) == 0
    table = (root / "report.md").read_text()
    assert "- Not started: 0 run(s) of the grid.\n- Every run of the grid is in the table.\n" in table
    assert json.loads((root / "report.json").read_text())["not_started"] == []
    # the archived MNLI run (per split) joins the folders' seeds: its task score is the mean of the two splits
    mnli = json.loads((root / "report.json").read_text())["rows"]["rapt"]["tasks"]["mnli"]
    assert mnli["seeds"] == [1, 2, 3] and [c["values"][1] for c in mnli["cells"]] == pytest.approx([70.0, 72.0])

    # an MNLI entry written with one "dev" split cannot share a row with run folders' two splits
    done[2]["metrics"] = {"acc": 0.7}
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(root), "--report", "--archive",
                                   str(_archive(tmp_path / "bad.json", done))]) == 2
    assert "rapt mnli: seed 2" in capsys.readouterr().err


@pytest.mark.parametrize("runs, message", [
    ([{"task": "rte", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}}], "needs task, method"),
    ([{"task": "nope", "method": "m", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}}], "unknown task"),
    ([{"task": "mrpc", "method": "m", "seed": 1, "epoch": 0, "metrics": {"f1": 0.5}}], "primary metric 'acc'"),
    ([{"task": "rte", "method": "m", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}}] * 2, "archived twice"),
    ([{"task": "rte", "method": "m", "seed": 1, "epoch": 0, "metrics": {"acc": "high"}}], "metrics must be"),
    ([{"task": "mnli", "method": "m", "seed": 1, "epoch": 0, "metrics": {"dev_matched": {"f1": 0.5}}}],
     "primary metric 'acc'"),
    ([{"task": "rte", "method": "m", "seed": "one", "epoch": 0, "metrics": {"acc": 0.5}}],
     r"runs\[0\]: seed must be a whole number, got 'one'"),
    ([{"task": "rte", "method": "m", "seed": None, "epoch": 0, "metrics": {"acc": 0.5}}],
     "seed must be a whole number, got None"),
    ([{"task": "rte", "method": "m", "seed": 1, "epoch": "?", "metrics": {"acc": 0.5}}],
     "epoch must be a whole number, got '\\?'"),
    ([{"task": "rte", "method": "m", "seed": 1, "epoch": 0, "steps": "n/a", "metrics": {"acc": 0.5}}],
     "steps must be a whole number, got 'n/a'"),
    ([{"task": "rte", "method": "m", "seed": 1.5, "epoch": 0, "metrics": {"acc": 0.5}}],
     "seed must be a whole number, got 1.5"),
    ([{"task": "rte", "method": "m", "seed": 1, "epoch": 0, "train_seconds": "long", "metrics": {"acc": 0.5}}],
     "train_seconds must be a number, got 'long'"),
    ([{"task": "rte", "method": "m", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5},
       "robustness": {"advglue": {"f1": 0.4}}}], "robustness set advglue lacks rte's primary metric 'acc'"),
])
def test_malformed_archive_is_one_line_error(tmp_path, runs, message):
    with pytest.raises(ConfigError, match=message):
        load_archive(_archive(tmp_path / "a.json", runs))
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the archive"):
        load_archive(tmp_path / "b.json")


def test_shipped_archive_regenerates_the_committed_table2(tmp_path):
    """Snapshot: the committed table2.md is what the code renders from the archive (tests/test_results_tables.py
    recomputes its numbers from the archive independently)."""
    runs = {(r.task, r.name, r.seed): r for r in load_archive(SHIPPED)}
    # the three expected values below are the archive file's own entries (archive_table2.json), as typed there
    assert runs[("mrpc", "smart_batchmean", 1)].best.metrics["dev"] == {"acc": 0.819, "f1": 0.875}
    assert runs[("cola", "rapt", 3)].best.primary == pytest.approx(0.212)
    assert runs[("rte", "r3f", 1)].device == "cuda (NVIDIA H200)" and runs[("rte", "smart", 1)].device == "cpu"
    # results/table2.md is the campaign's report over every Table 2 grid from the archive alone (no run folders)
    root = tmp_path / "table2"
    root.mkdir()
    grids = [str(GRIDS / f"{g}.yml") for g in ("core", "extra", "eta", "smart_step", "r3f")]
    assert campaign.main(["--grid", *grids, "--root", str(root), "--report", "--archive", SHIPPED, "--order",
                          "standard,smart,smart_batchmean,smart_best_step,rapt,rapt_best_eta,rapt_shared,"
                          "rapt_embedding,r3f", "--baselines", "standard,smart,rapt"]) == 0
    assert (root / "report.md").read_text() == (GRIDS.parent / "results" / "table2.md").read_text()


def test_robustness_archive_regenerates_the_committed_study_report(tmp_path):
    """Snapshot: results/robustness_report.md is the campaign's report over the robustness grid from its archive
    alone (tests/test_results_tables.py recomputes its robustness numbers independently)."""
    root = tmp_path / "robustness"
    root.mkdir()
    assert campaign.main(["--grid", str(GRIDS / "robustness.yml"), "--root", str(root), "--report", "--archive",
                          str(GRIDS.parent / "results" / "archive_robustness.json"), "--order",
                          "standard,standard_hf,smart,rapt,rapt_shared,r3f", "--baselines", "standard,smart"]) == 0
    assert (root / "report.md").read_text() == (GRIDS.parent / "results" / "robustness_report.md").read_text()


def test_results_md_study_summary_is_the_report_at_the_seeds_it_names(tmp_path):
    """RESULTS' 'Where it stands at seeds A-B' tables are copied from the study's report over those seeds (the
    campaign's --seeds slice of the archive): every mean ± sd, gap and paired AdvGLUE row, with its p, corrected
    p and detectable differences."""
    import re

    text = (GRIDS.parent / "RESULTS.md").read_text()
    found = re.search(r"\*\*Where it stands at seeds (\d+)-(\d+)\*\*", text)
    assert found, "RESULTS.md has no 'Where it stands at seeds A-B' summary"
    seeds = ",".join(str(s) for s in range(int(found.group(1)), int(found.group(2)) + 1))
    block = text[found.start():text.index("**Per seed.**", found.start())]
    root = tmp_path / "report"
    root.mkdir()
    assert campaign.main(["--grid", str(GRIDS / "robustness.yml"), "--root", str(root), "--report", "--archive",
                          str(GRIDS.parent / "results" / "archive_robustness.json"), "--seeds", seeds, "--order",
                          "standard,standard_hf,smart,rapt,rapt_shared,r3f", "--baselines", "standard,smart"]) == 0
    report = (root / "report.md").read_text()
    names = {"standard": "standard", "standard_hf": "standard, `transformers.Trainer`", "smart": "SMART",
             "rapt": "RAPT", "rapt_shared": "RAPT shared", "r3f": "R3F"}
    summary = {r[0]: r for r in _table(block, "| Method | Seeds | RTE dev")}
    tests = {(r[0], r[1]): r for r in _table(block, "| Task | A vs B |")}
    assert set(summary) == set(names.values())
    checked = 0
    for task, label in (("RTE", "RTE"), ("SST", "SST-2")):
        section = report[report.index(f"### {task}: dev and advglue"):]
        for row in _table(section, "| Method | Seeds | dev"):
            mine = summary[names[row[0]]]
            cols = (2, 3, 4) if task == "RTE" else (5, 6, 7)
            assert [mine[c] for c in cols] == row[2:5], (task, row, mine)
            assert row[1] in mine[1].split("/"), (task, row, mine)
            checked += 1
        for row in _table(section, "| On | A | B |"):
            if row[0] != "advglue" or row[8] == "-":
                continue
            mine = tests[(label, f"{names[row[1]]} vs {names[row[2]]}")]
            # mean ± sd, wins, p, p (Holm), detectable, detectable (Holm)
            assert mine[2:] == [f"{row[4]} ± {row[5]}", f"{row[6]} / {row[7]}", row[8], row[9], row[10], row[11]], (
                row, mine)
            checked += 1
    assert checked == len(summary) * 2 + len(tests)


def test_an_archive_entry_may_carry_its_settings_and_an_unknown_epoch(tmp_path):
    arch = _archive(tmp_path / "a.json", [
        {"task": "rte", "method": "max5", "seed": 1, "epoch": None, "metrics": {"acc": 0.56},
         "config": {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 5}}},
        {"task": "rte", "method": "standard", "seed": 1, "epoch": 1, "metrics": {"acc": 0.5}}])
    max5, std = load_archive(arch)
    assert max5.settings()["method_options"]["max_layer"] == 5 and max5.best.epoch == -1
    assert std.config is None and std.best.epoch == 1
    bad = _archive(tmp_path / "b.json", [{"task": "rte", "method": "m", "seed": 1, "epoch": 0,
                                          "metrics": {"acc": 0.5}, "config": [1]}])
    with pytest.raises(ConfigError, match="config must be an object"):
        load_archive(bad)


def test_layer_sweep_from_the_shipped_archive_reproduces_its_table_and_a_new_run_fills_the_gap(tmp_path, capsys):
    """Snapshot: the committed layers.md is regenerated from archive_layers.json and archive_table2.json (the
    baseline; tests/test_results_tables.py recomputes it independently); a finished RTE max5 folder under --root
    replaces its archived point."""
    from experiments.rapt import layers
    from tests.test_campaign_report import _write_run

    results = campaign.__file__.replace("campaign.py", "results/")
    out = tmp_path / "layers.png"
    args = ["--root", str(tmp_path / "none"), "--archive", results + "archive_layers.json",
            "--baseline", str(tmp_path / "none"), "--baseline_archive", SHIPPED, "--out", str(out)]
    assert layers.main(args) == 0
    assert out.with_suffix(".md").read_text() == open(results + "layers.md").read()
    # the archived accuracies of archive_layers.json (RTE, seed 1), x100 (one run per point: no mean to take)
    assert "rte: embed 54.5, 1 54.9, 2 53.8, 3 54.9, 4 54.9, 5 54.5, 6 55.2; best max_layer 6\n" in \
        capsys.readouterr().out
    root = tmp_path / "layers"
    _write_run(root, "rte", "max5", 1, [{"acc": 0.40}, {"acc": 0.57}])
    (root / "rte" / "max5" / "s1" / "config.json").write_text(json.dumps(
        {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 5}}))
    assert layers.main(["--root", str(root), *args[2:]]) == 0
    assert "rte: embed 54.5, 1 54.9, 2 53.8, 3 54.9, 4 54.9, 5 57.0, 6 55.2; best max_layer 5\n" in \
        capsys.readouterr().out


def test_order_puts_rows_and_best_of_rows_where_asked_and_pairs_follow_it(tmp_path):
    """--order: an archived row right after the row it is compared with, a best-of row in the middle; each
    paired test compares a row with the rows above it."""
    root = tmp_path / "root"
    grid = _grid(tmp_path / "grid.yml")
    write_fake_runs(root, grid)
    arch = _archive(tmp_path / "a.json", [
        {"task": t, "method": "old_smart", "seed": s, "epoch": 0, "metrics": m}
        for t, m in (("rte", {"acc": 0.6}), ("mrpc", {"acc": 0.8, "f1": 0.85}), ("stsb", {"pearson": 0.8}),
                     ("cola", {"mcc": 0.3}), ("mnli", {"acc": 0.7})) for s in (1, 2)])
    order = "standard,smart,old_smart,rapt_best_eta,rapt"
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--report", "--archive", str(arch),
                          "--order", order]) == 0
    report = json.loads((root / "report.json").read_text())
    assert report["methods"][:5] == order.split(",")
    assert report["methods"][5:] == ["rapt_eta1.5"]  # the grid's other rows follow
    pairs = {(c["a"], c["b"]) for c in report["paired"]}
    assert ("old_smart", "smart") in pairs and ("rapt", "old_smart") in pairs and ("smart", "old_smart") not in pairs



def _finished_folder(root, task, name, seed, config, evals, seconds=120.0, steps=40):
    folder = root / task / name / f"s{seed}-abc"
    folder.mkdir(parents=True)
    recs = [{"epoch": i, "step": 10 * (i + 1), "task": task, "split": "dev", "split_name": "dev", "method": name,
             "seed": seed, "train_seconds": 30.0 * (i + 1), "metrics": m} for i, m in enumerate(evals)]
    recs.append({"epoch": len(evals) - 1, "step": steps, "task": task, "split": "train", "method": name,
                 "seed": seed, "train_seconds": seconds, "steps": steps, "loss": 0.5})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (folder / "flags.json").write_text(json.dumps({"task": task, "method_name": name, "seed": seed}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_run_device_from_config_json():
    from experiments.rapt.results import run_device

    assert run_device({"resolved_device": "cuda (NVIDIA H200)", "device": "auto"}) == "cuda (NVIDIA H200)"
    assert run_device({"device": "cuda:1", "torch": "2.11.0+cu130"}) == "cuda"  # written before resolved_device
    assert run_device({"device": "auto", "torch": "2.13.0+cpu"}) == "cpu"
    assert run_device({"device": "auto", "torch": "2.11.0+cu130"}) == "?"  # auto on a CUDA build: cannot tell


def test_archive_cli_adds_finished_folders_with_their_best_evaluation_and_device(tmp_path, capsys):
    from experiments.rapt import archive

    root = tmp_path / "runs"
    gpu = _finished_folder(root, "mrpc", "r3f", 1, {"method": "r3f", "method_options": {"eps": 1e-5},
                                                     "resolved_device": "cuda (NVIDIA H200)"},
                           [{"acc": 0.80123, "f1": 0.86}, {"acc": 0.79, "f1": 0.9}], seconds=61.66, steps=345)
    cpu = _finished_folder(root, "rte", "r3f", 1, {"method": "r3f", "device": "auto", "torch": "2.13.0+cpu"},
                           [{"acc": 0.55}])
    path = tmp_path / "a.json"
    assert run_cli(archive.main, [str(path), str(gpu)]) == 2  # a new archive needs --source
    assert "give --source" in capsys.readouterr().err and not path.exists()
    assert archive.main([str(path), str(gpu), str(cpu), "--source", "test runs"]) == 0
    data = json.loads(path.read_text())
    assert data["source"] == "test runs" and len(data["runs"]) == 2
    entry = data["runs"][0]
    # the best evaluation by acc (epoch 0), its own f1 with it, 4 decimals; the run's clock, steps and device
    assert entry["metrics"] == {"acc": 0.8012, "f1": 0.86} and entry["epoch"] == 0
    assert entry["train_seconds"] == 61.7 and entry["steps"] == 345 and entry["device"] == "cuda (NVIDIA H200)"
    assert entry["config"] == {"method": "r3f", "method_options": {"eps": 1e-5}}
    loaded = {r.task: r for r in load_archive(path)}
    assert loaded["mrpc"].device == "cuda (NVIDIA H200)" and loaded["rte"].device == "cpu"
    assert loaded["mrpc"].best.primary == pytest.approx(0.8012) and loaded["mrpc"].steps == 345
    # adding a run that is archived already is an error that leaves the file as it was; --replace replaces it
    before = path.read_text()
    assert run_cli(archive.main, [str(path), str(cpu)]) == 2
    assert "rte/r3f seed 1 is archived already" in capsys.readouterr().err and path.read_text() == before
    (cpu / "metrics.jsonl").write_text((cpu / "metrics.jsonl").read_text().replace('"acc": 0.55', '"acc": 0.6'))
    assert archive.main([str(path), str(cpu), "--replace"]) == 0
    assert [r.best.primary for r in load_archive(path) if r.task == "rte"] == [pytest.approx(0.6)]
    unfinished = _finished_folder(root, "cola", "r3f", 1, {"method": "r3f"}, [{"mcc": 0.2}])
    (unfinished / "metrics.jsonl").write_text((unfinished / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert run_cli(archive.main, [str(path), str(unfinished)]) == 2
    assert "not a finished run" in capsys.readouterr().err and len(load_archive(path)) == 2


def test_archive_new_adds_the_finished_runs_not_archived_yet_and_can_be_repeated(tmp_path, capsys):
    from experiments.rapt import archive

    root = tmp_path / "runs"
    done = _finished_folder(root, "rte", "standard", 1, {"method": "standard"}, [{"acc": 0.55}])
    running = _finished_folder(root, "rte", "standard", 2, {"method": "standard"}, [{"acc": 0.57}])
    (running / "metrics.jsonl").write_text((running / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    started = root / "rte" / "standard" / "s3-x"
    started.mkdir(parents=True)  # no records yet
    path = tmp_path / "a.json"
    folders = [str(done), str(running), str(started)]
    assert archive.main([str(path), *folders, "--new", "--source", "study"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"skipped {running}: not finished", f"skipped {started}: no records yet",
                   "added rte/standard seed 1: epoch 0 {'acc': 0.55} on ?"]
    before = path.read_text()
    assert archive.main([str(path), *folders, "--new"]) == 0  # again: nothing new, the file untouched
    assert capsys.readouterr().out.splitlines()[0] == f"skipped {done}: archived already"
    assert path.read_text() == before
    (running / "metrics.jsonl").write_text((done / "metrics.jsonl").read_text().replace('"seed": 1', '"seed": 2'))
    assert archive.main([str(path), *folders, "--new"]) == 0  # the second run finished meanwhile
    assert sorted(r.seed for r in load_archive(path)) == [1, 2]
    with pytest.raises(SystemExit):
        archive.main([str(path), str(done), "--new", "--replace"])


def test_archive_device_defaults_to_the_files_and_then_to_unknown(tmp_path):
    runs = [{"task": "rte", "method": "a", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}},
            {"task": "rte", "method": "b", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5}, "device": "cuda (X)"}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"source": "t", "device": "cpu", "runs": runs}))
    assert [r.device for r in load_archive(path)] == ["cpu", "cuda (X)"]
    assert [r.device for r in load_archive(_archive(tmp_path / "b.json", runs))] == ["?", "cuda (X)"]


def test_training_time_ratios_compare_runs_on_the_same_device_only(tmp_path):
    from experiments.rapt.report import build_report, report_markdown

    runs = []
    for name, seed, device, seconds in (("standard", 1, "cpu", 400.0), ("smart", 1, "cpu", 1200.0),
                                        ("r3f", 1, "cuda (H200)", 20.0), ("rapt", 1, "cpu", 600.0),
                                        ("rapt", 2, "cuda (H200)", 8.0)):
        runs.append({"task": "rte", "method": name, "seed": seed, "epoch": 0, "metrics": {"acc": 0.5},
                     "train_seconds": seconds, "steps": 100, "device": device})
    report = build_report(load_archive(_archive(tmp_path / "a.json", runs)), ["standard", "smart", "rapt", "r3f"])
    times = report["times"]["rte"]
    assert set(times) == {"standard", "smart", "rapt @ cpu", "rapt @ cuda (H200)", "r3f"}
    assert times["rapt @ cpu"]["/standard"] == pytest.approx(1.5) and times["rapt @ cpu"]["/smart"] == pytest.approx(0.5)
    # no standard or smart ran on the GPU: its rows get no ratio rather than one against a CPU clock
    assert "/standard" not in times["r3f"] and "/smart" not in times["rapt @ cuda (H200)"]
    md = report_markdown(report, "t")
    assert "| RTE | rapt @ cpu | cpu | 1 | 10.0 | 6.00 | 1.50 | 0.50 |" in md
    assert "| RTE | r3f | cuda (H200) | 1 | 0.3 | 0.20 | - | - |" in md


def test_a_clock_that_timed_evaluations_is_shown_apart_and_gets_no_ratio(tmp_path, capsys):
    """The peer's first runs timed their evaluations with their steps: their clock is not ours, so the Training
    time table marks it and divides by no standard run."""
    root = tmp_path / "root"
    root.mkdir()
    runs = [{"task": "rte", "method": "standard", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5},
             "train_seconds": 600.0, "steps": 200, "device": "cpu"},
            {"task": "rte", "method": "smart", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5},
             "train_seconds": 1800.0, "steps": 200, "device": "cpu"},
            {"task": "rte", "method": "standard_hf", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5},
             "train_seconds": 1200.0, "steps": 200, "device": "cpu", "clock": "steps+eval"}]
    for r in runs:
        r["robustness"] = {"advglue": {"acc": 0.25}}
    arch = _archive(tmp_path / "a.json", runs)
    assert campaign.main(["--root", str(root), "--report", "--archive", str(arch), "--order",
                          "standard,standard_hf,smart"]) == 0
    table = (root / "report.md").read_text()
    assert "| RTE | standard_hf | cpu, clock with evaluations | 1 | 20.0 | 6.00 | - | - |" in table
    assert "| RTE | smart | cpu | 1 | 30.0 | 9.00 | 3.00 | 1.00 |" in table  # 9 s/step over standard's 3
    assert "A device marked 'clock with evaluations'" in table
    robust = table[table.index("## Robustness"):]  # its cost column says which clock, and divides by nothing
    assert "| standard_hf | 1 | 50.0 | 25.0 | 25.0 | 6.00 (with evaluations) | - |" in robust
    assert "| smart | 1 | 50.0 | 25.0 | 25.0 | 9.00 | 3.00 |" in robust
    runs[2]["clock"] = "wall"
    bad = _archive(tmp_path / "b.json", runs)
    assert run_cli(campaign.main, ["--root", str(root), "--report", "--archive", str(bad)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {bad}: runs[2]: clock 'wall'; choose one of steps, steps+eval")


def test_archiving_folders_records_their_clock_only_when_it_is_not_the_steps_alone(tmp_path):
    from experiments.rapt.archive import add_runs

    root = tmp_path / "root"
    write_fake_runs(root, _grid(tmp_path / "grid.yml"))
    done = sorted(str(f) for f in root.glob("rte/standard/s*") if (f / "metrics.jsonl").is_file())[:2]
    add_runs(tmp_path / "steps.json", done[:1], source="test")
    add_runs(tmp_path / "eval.json", done[1:], source="test", clock="steps+eval")
    assert "clock" not in json.loads((tmp_path / "steps.json").read_text())["runs"][0]
    assert json.loads((tmp_path / "eval.json").read_text())["runs"][0]["clock"] == "steps+eval"
    assert [r.clock for r in load_archive(tmp_path / "eval.json")] == ["steps+eval"]
    with pytest.raises(ConfigError, match="--clock 'wall'; choose one of steps, steps"):
        add_runs(tmp_path / "x.json", done[:1], source="test", clock="wall")
