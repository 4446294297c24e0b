"""The RAPT campaign runner (experiments.rapt.campaign) and Figure 1 (experiments.rapt.figure1).

One test runs real ``mt_dnn.train`` subprocesses (tiny BERT, fixture GLUE files, 2 steps each); the report and
the figure are checked on hand-written metrics files whose expected numbers are worked out below.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from experiments.rapt import campaign, figure1, layers
from mt_dnn.cli_utils import run_cli


def _grid(path: Path, **overrides) -> Path:
    grid = {"tasks": ["rte"], "seeds": [1, 2],
            "flags": {"max_steps": 2, "batch_size": 8, "lr": 1.0e-3, "save_every_steps": 1, "log_every": 1},
            "methods": {"standard": {"method": "standard"}, "rapt": {"method": "rapt", "rapt_max_layer": 2}}}
    grid.update(overrides)
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _progress(root: Path) -> list[list[str]]:
    return [line.split("\t") for line in (root / "progress.log").read_text().splitlines()]


def _run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("rte/*/s*/flags.json"))


def test_campaign_runs_skips_and_resumes(tmp_path, glue_dir, tiny_model_dir):
    grid = _grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    base = ["--grid", str(grid), "--root", str(root), "--glue_dir", str(glue_dir), "--model", str(tiny_model_dir)]
    assert campaign.main([*base, "--jobs", "2", "--keep_checkpoints"]) == 0

    folders = _run_folders(root)
    assert [(f.parent.name, f.name.split("-")[0]) for f in folders] == [
        ("rapt", "s1"), ("rapt", "s2"), ("standard", "s1"), ("standard", "s2")]
    for f in folders:
        assert campaign.is_finished(f)
        info = json.loads((f / "flags.json").read_text())
        assert info["identity"]["max_steps"] == 2 and f.name.endswith(info["hash"])
        assert "--resume" in (f / "campaign.out").read_text()
    first = _progress(root)
    assert sorted(s for _, _, s, _ in first) == ["done"] * 4 + ["start"] * 4
    assert (root / "table2.md").is_file() and (root / "table2.json").is_file()
    report = json.loads((root / "table2.json").read_text())
    assert report["methods"] == ["standard", "rapt"] and report["rows"]["rapt"]["tasks"]["rte"]["seeds"] == [1, 2]

    # a rerun starts no subprocess: every run is logged as skipped
    assert campaign.main(base) == 0
    second = _progress(root)[len(first):]
    assert [s for _, _, s, _ in second] == ["skip"] * 4

    # an unfinished run (train record gone, a checkpoint at step 1 left) is resumed, and only it
    victim = next(f for f in folders if f.parent.name == "rapt" and f.name.startswith("s2-"))
    assert (victim / "checkpoint" / "trainer_state.pt").is_file()
    lines = (victim / "metrics.jsonl").read_text().splitlines()
    (victim / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert campaign.run_status(victim) == "resume"
    assert campaign.main(base) == 0
    third = _progress(root)[len(first) + len(second):]
    label = f"rte/rapt/{victim.name}"
    assert [(r, s) for _, r, s, _ in third if s != "skip"] == [(label, "resume"), (label, "done")]
    assert sum(s == "skip" for _, _, s, _ in third) == 3
    assert "resumed from" in (victim / "campaign.out").read_text()  # logged before train.log opens
    assert campaign.is_finished(victim) and not (victim / "checkpoint").exists()  # removed once finished


def test_a_failed_run_is_logged_and_the_campaign_exits_1(tmp_path, monkeypatch, capsys):
    """No real training here: the subprocess is replaced by one that fails at once."""
    calls = []

    def fake_run(cmd, stdout, stderr, env):
        calls.append(cmd)
        stdout.write("error: boom\n")
        return campaign.subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(campaign.subprocess, "run", fake_run)
    grid = _grid(tmp_path / "grid.yml", seeds=[1])
    root = tmp_path / "camp"
    assert campaign.main(["--grid", str(grid), "--root", str(root)]) == 1
    assert len(calls) == 2 and all(c[1:3] == ["-m", "mt_dnn.train"] and c[-1] == "--resume" for c in calls)
    assert [s for _, _, s, _ in _progress(root)].count("failed rc=2") == 2
    assert "2 run(s) failed" in capsys.readouterr().err
    assert all(campaign.run_status(f) == "run" for f in _run_folders(root))  # nothing written: a fresh start next


def test_subprocesses_get_one_thread_when_side_by_side():
    assert campaign.run_env(2)["OMP_NUM_THREADS"] == "1"
    assert campaign.run_env(1).get("MT_DNN_NO_TQDM") == "1"


def test_folder_hash_follows_the_hyperparameters(tmp_path, glue_dir):
    def folders(**flags) -> dict[str, Path]:
        g = campaign.load_grid(_grid(tmp_path / "g.yml", flags=flags))
        return {f"{r.name}{r.seed}": r.folder for r in campaign.plan_runs(g, tmp_path / "root")}

    a = folders(lr=3.0e-5, epochs=2)
    assert folders(lr="3e-5", epochs=2, cache_dir="elsewhere", log_every=7) == a  # same values, other spelling
    assert folders(lr=2.0e-5, epochs=2)["standard1"] != a["standard1"]
    assert a["standard1"].parent == tmp_path / "root" / "rte" / "standard"
    assert a["standard1"].name.startswith("s1-") and a["standard2"].name.startswith("s2-")


def test_dry_run_estimates_and_runs_nothing(tmp_path, capsys):
    grid = _grid(tmp_path / "grid.yml", flags={"epochs": 2, "batch_size": 8, "max_train_samples": 100})
    root = tmp_path / "camp"
    # a finished run of rte/standard (not in the grid: seed 9) measured 2.0 s per step
    measured = root / "rte" / "standard" / "s9-old"
    measured.mkdir(parents=True)
    (measured / "flags.json").write_text(json.dumps(
        {"task": "rte", "method_name": "standard", "seed": 9, "identity": {"method": "standard"}}))
    (measured / "metrics.jsonl").write_text(json.dumps(
        {"split": "train", "train_seconds": 10.0, "steps": 5, "loss": 0.5, "reg_loss": 0.0}) + "\n")
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"rte": {"standard": 99.0, "rapt": 3.0}}))
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--dry_run", "--step_costs", str(costs)]) == 0
    out = capsys.readouterr().out
    # steps = 2 epochs x ceil(100 / 8) = 26; standard 26 x 2.0 s = 52 s, rapt 26 x 3.0 s = 78 s; 2 seeds: 260 s
    std_lines = [ln for ln in out.splitlines() if ln.startswith("run") and "rte/standard/" in ln]
    rapt_lines = [ln for ln in out.splitlines() if ln.startswith("run") and "rte/rapt/" in ln]
    assert len(std_lines) == 2 and all("26" in ln and "2.000" in ln and "52 s" in ln and "measured" in ln
                                       for ln in std_lines)
    assert len(rapt_lines) == 2 and all("3.000" in ln and "78 s" in ln and "--step_costs rte.rapt" in ln
                                        for ln in rapt_lines)
    assert "4 runs: 0 done, 0 to resume, 4 to run" in out and "4.3 min" in out
    assert not (root / "progress.log").exists()
    assert sorted(p.name for p in (root / "rte").iterdir()) == ["standard"]  # no run folder was made


def test_a_method_can_be_limited_to_some_tasks_and_costs_can_come_from_another_root(tmp_path, capsys):
    grid = _grid(tmp_path / "grid.yml", tasks=["rte", "mrpc"], seeds=[1],
                 flags={"epochs": 1, "batch_size": 8, "max_train_samples": 80},
                 methods={"standard": {"method": "standard"},
                          "rapt_eta1.5": {"method": "rapt", "rapt_eta": 1.5, "tasks": ["mrpc"]}})
    g = campaign.load_grid(grid)
    assert [(r.task, r.name) for r in campaign.plan_runs(g, tmp_path / "camp")] == [
        ("rte", "standard"), ("mrpc", "standard"), ("mrpc", "rapt_eta1.5")]
    # a pilot elsewhere measured rapt (any eta: same cost key) at 4 s per step
    pilot = tmp_path / "pilot" / "mrpc" / "rapt" / "s1-x"
    pilot.mkdir(parents=True)
    (pilot / "flags.json").write_text(json.dumps(
        {"task": "mrpc", "method_name": "rapt", "seed": 1, "identity": {"method": "rapt", "batch_size": 8}}))
    (pilot / "metrics.jsonl").write_text(json.dumps({"split": "train", "train_seconds": 8.0, "steps": 2}) + "\n")
    base = ["--grid", str(grid), "--root", str(tmp_path / "camp"), "--dry_run"]
    assert campaign.main([*base, "--costs_from", str(tmp_path / "pilot")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "mrpc/rapt_eta1.5/" in ln)
    assert line.split()[2:5] == ["10", "4.000", "40"]  # ceil(80 / 8) = 10 steps x 4 s
    assert run_cli(campaign.main, [*base, "--costs_from", str(tmp_path / "nowhere")]) == 2
    assert "no such campaign folder" in capsys.readouterr().err


def test_dry_run_sees_started_runs(tmp_path, capsys):
    grid = _grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    runs = campaign.plan_runs(campaign.load_grid(grid), root)
    runs[0].folder.mkdir(parents=True)
    (runs[0].folder / "metrics.jsonl").write_text(json.dumps({"split": "dev", "step": 1, "epoch": 0}) + "\n")
    runs[1].folder.mkdir(parents=True)
    (runs[1].folder / "metrics.jsonl").write_text(json.dumps({"split": "train", "steps": 2, "train_seconds": 1}) + "\n")
    (runs[1].folder / "flags.json").write_text(json.dumps(
        {"task": "rte", "method_name": "rapt", "seed": 1, "identity": runs[1].identity}))
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"resume  {runs[0].label}" in out and f"done    {runs[1].label}" in out
    assert "4 runs: 1 done, 1 to resume, 2 to run" in out
    # max_steps 2: the started run has 2 - 1 = 1 step left; rapt seed 2 uses the finished rapt run's 1 s / 2 steps
    resume = next(ln for ln in out.splitlines() if ln.startswith("resume"))
    assert resume.split()[2] == "1" and resume.split()[-1] == "unknown"
    rapt2 = next(ln for ln in out.splitlines() if ln.startswith("run") and runs[3].label in ln)
    assert runs[3].name == "rapt" and "0.500" in rapt2 and "1 s" in rapt2


@pytest.mark.parametrize("change,message", [
    ({"tasks": ["nope"]}, "unknown task(s) nope"),
    ({"methods": {"x": {"rapt_eta": 2.0}}}, "method x needs a `method:` flag"),
    ({"methods": {"x": {"method": "standard", "seed": 3}}}, "methods.x sets seed"),
    ({"methods": {"x": {"method": "standard", "rapt_eta": 2.0}}}, "--rapt_eta is an option of --method rapt"),
    ({"methods": {"x": {"method": "standard", "no_such_flag": 1}}}, "unrecognized arguments: --no_such_flag"),
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"methods": {"x": {"method": "standard", "tasks": ["mrpc"]}}}, "method x: tasks must be a non-empty subset"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, change, message):
    grid = _grid(tmp_path / "grid.yml", **change)
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(tmp_path / "r"), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err


# ---- report and figure from hand-written metrics ----------------------------------------------------------------

def _write_run(root: Path, task: str, name: str, seed: int, evals: list[dict], finished: bool = True) -> None:
    """Dev records at 60 s x seed x (i + 1) of training, then (if finished) the train record."""
    folder = root / task / name / f"s{seed}"
    folder.mkdir(parents=True)
    recs = [{"epoch": i, "step": 10 * (i + 1), "task": task, "split": "dev", "split_name": "dev", "method": name,
             "seed": seed, "train_seconds": 60.0 * seed * (i + 1), "metrics": m} for i, m in enumerate(evals)]
    if finished:
        recs.append({"epoch": len(evals) - 1, "step": 10 * len(evals), "task": task, "split": "train",
                     "method": name, "seed": seed, "train_seconds": 60.0 * seed * len(evals),
                     "steps": 10 * len(evals), "loss": 0.5, "reg_loss": 0.1})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _hand_written(root: Path) -> None:
    _write_run(root, "rte", "standard", 1, [{"acc": 0.60}, {"acc": 0.65}])
    _write_run(root, "rte", "standard", 2, [{"acc": 0.70}, {"acc": 0.68}])
    _write_run(root, "rte", "rapt", 1, [{"acc": 0.62}, {"acc": 0.71}])
    _write_run(root, "rte", "rapt", 2, [{"acc": 0.69}, {"acc": 0.72}])
    # MRPC: the best evaluation is chosen by acc, and its f1 comes with it (not the best f1)
    _write_run(root, "mrpc", "standard", 1, [{"acc": 0.80, "f1": 0.85}, {"acc": 0.78, "f1": 0.90}])
    _write_run(root, "mrpc", "standard", 2, [{"acc": 0.82, "f1": 0.88}])
    _write_run(root, "mrpc", "rapt", 1, [{"acc": 0.84, "f1": 0.89}])
    _write_run(root, "mrpc", "rapt", 2, [{"acc": 0.83, "f1": 0.87}])
    _write_run(root, "stsb", "standard", 1, [{"pearson": 0.50, "spearman": 0.40}])
    _write_run(root, "rte", "smart", 1, [{"acc": 0.99}], finished=False)  # unfinished: left out


def test_report_means_stds_and_paired_statistics(tmp_path, capsys):
    root = tmp_path / "camp"
    _hand_written(root)
    assert campaign.main(["--root", str(root), "--report"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((root / "table2.json").read_text())
    md = (root / "table2.md").read_text()
    assert printed == md
    assert report["tasks"] == ["rte", "mrpc", "stsb"] and report["methods"] == ["standard", "rapt"]  # baseline first
    rows = report["rows"]
    std = rows["standard"]["tasks"]
    # rte standard: best 65, 70 -> mean 67.5, sample std sqrt(2 * 2.5^2 / 1) = 3.536
    assert std["rte"]["cells"][0]["mean"] == pytest.approx(67.5)
    assert std["rte"]["cells"][0]["std"] == pytest.approx(math.sqrt(12.5))
    # mrpc standard: (80, 85) and (82, 88) -> acc 81.0 ± 1.414, f1 86.5 ± 2.121
    acc, f1 = std["mrpc"]["cells"]
    assert (acc["metric"], f1["metric"]) == ("acc", "f1")
    assert acc["mean"] == pytest.approx(81.0) and acc["std"] == pytest.approx(math.sqrt(2))
    assert f1["mean"] == pytest.approx(86.5) and f1["std"] == pytest.approx(math.sqrt(4.5))
    # average = mean of task scores: (67.5 + (81 + 86.5) / 2 + (50 + 40) / 2) / 3
    assert rows["standard"]["average"] == pytest.approx((67.5 + 83.75 + 45.0) / 3)
    assert rows["rapt"]["average"] is None  # no STS-B run
    assert rows["standard"]["average_std"] is None  # STS-B has seed 1 only: no per-seed Average for seed 2
    assert "| standard | 67.5 ± 3.5 | 81.0 ± 1.4 / 86.5 ± 2.1 | 50.0 / 40.0 | 65.4 |" in md
    assert "| rapt | 71.5 ± 0.7 | 83.5 ± 0.7 / 88.0 ± 1.4 | - | - |" in md
    assert "RTE Acc" in md and "MRPC Acc/F1" in md and "STS-B P/S" in md
    assert "| Standard | 69.3 | 86.9/90.7 | 89.9/89.4 |" in md
    assert len(report["unfinished"]) == 1 and "smart" in report["unfinished"][0]

    paired = {(c["task"], c["a"], c["b"]): c for c in report["paired"]}
    assert set(paired) == {("rte", "rapt", "standard"), ("mrpc", "rapt", "standard"), ("average", "rapt", "standard")}
    # rte: differences 71-65 = 6 and 72-70 = 2 -> mean 4, sd 2.828, t = 4 / (2.828 / sqrt 2) = 2, df 1;
    # a t distribution with 1 df is Cauchy: two-sided p = 1 - (2 / pi) atan(|t|)
    rte = paired[("rte", "rapt", "standard")]
    assert rte["n"] == 2 and rte["a_wins"] == 2 and rte["b_wins"] == 0
    assert rte["mean_diff"] == pytest.approx(4.0)
    assert rte["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0))
    # mrpc: 84-80 = 4 and 83-82 = 1 -> mean 2.5, sd 2.121, t = 2.5 / 1.5
    mrpc = paired[("mrpc", "rapt", "standard")]
    assert mrpc["mean_diff"] == pytest.approx(2.5) and mrpc["a_wins"] == 2
    assert mrpc["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(2.5 / 1.5))
    assert "| RTE | rapt | standard | 2 | +4.00 | 2.83 | 2 | 0 | 0.295 | within seed noise |" in md
    # rapt has no STS-B run: no average over every task, only over the two tasks both have on seeds 1-2
    assert paired[("average", "rapt", "standard")]["over"] == ["rte", "mrpc"]
    # per seed: each run's best evaluation and its epoch (from 1); MRPC seed 1 of standard is epoch 1 (best acc)
    per_seed = md[md.index("## Per seed"):md.index("## Training time")]
    assert "| standard | 65.0 (ep 2) | 70.0 (ep 1) |" in per_seed
    assert "| standard | 80.0/85.0 (ep 1) | 82.0/88.0 (ep 1) |" in per_seed
    assert "STS-B P/S:\n\n| Method | seed 1 |\n|---|---|\n| standard | 50.0/40.0 (ep 1) |\n" in per_seed


def test_paired_test_on_the_average_uses_each_seeds_mean_task_score(tmp_path):
    root = tmp_path / "camp"
    _hand_written(root)
    results = [r for r in campaign.scan_results(root) if r.task != "stsb"]
    report = campaign.build_report(results, ["standard", "rapt"], None)
    avg = [c for c in report["paired"] if c["task"] == "average"]
    # per seed, mean of (RTE acc, mean of MRPC acc and F1): standard 73.75, 77.5; rapt 78.75, 78.5
    # -> differences 5 and 1: mean 3, sd 2.828, t = 3 / 2 = 1.5 with 1 df
    assert len(avg) == 1 and (avg[0]["a"], avg[0]["b"], avg[0]["seeds"]) == ("rapt", "standard", [1, 2])
    assert avg[0]["mean_diff"] == pytest.approx(3.0) and avg[0]["sd_diff"] == pytest.approx(math.sqrt(8))
    assert avg[0]["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(1.5))
    assert report["paired"][-1] is avg[0]  # after the per-task rows
    # the Average column's ± is the std of those per-seed averages: standard 73.75, 77.5 -> sd 3.75 / sqrt 2
    assert report["rows"]["standard"]["average"] == pytest.approx(75.625)
    assert report["rows"]["standard"]["average_std"] == pytest.approx(3.75 / math.sqrt(2))
    assert report["rows"]["rapt"]["average_std"] == pytest.approx(0.25 / math.sqrt(2))
    md = campaign.report_markdown(report, "x")
    assert "| Average | rapt | standard | 2 | +3.00 | 2.83 | 2 | 0 | 0.374 | within seed noise |" in md
    assert "| 75.6 ± 2.7 | 2 |" in md


def test_paired_average_over_the_tasks_with_most_seeds_while_others_lack_seeds(tmp_path):
    root = tmp_path / "camp"
    _hand_written(root)
    _write_run(root, "stsb", "rapt", 1, [{"pearson": 0.60, "spearman": 0.50}])  # STS-B: seed 1 only
    report = campaign.build_report(campaign.scan_results(root), ["standard", "rapt"], None)
    avg = [c for c in report["paired"] if c["task"] == "average"]
    # every task: seed 1 only (no test); RTE and MRPC have seeds 1-2: as in the test above, mean 3, p of t = 1.5
    assert [(c["over"], c["seeds"]) for c in avg] == [(["rte", "mrpc", "stsb"], [1]), (["rte", "mrpc"], [1, 2])]
    assert avg[0]["p_value"] is None and avg[0]["mean_diff"] == pytest.approx(((71 + 86.5 + 55) - (65 + 82.5 + 45)) / 3)
    assert avg[1]["mean_diff"] == pytest.approx(3.0)
    assert avg[1]["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(1.5))
    md = campaign.report_markdown(report, "x")
    assert "| Average | rapt | standard | 1 |" in md
    assert "| Average (RTE, MRPC) | rapt | standard | 2 | +3.00 | 2.83 | 2 | 0 | 0.374 | within seed noise |" in md


def test_best_of_rows_pick_the_best_member_per_task(tmp_path):
    root = tmp_path / "camp"
    _hand_written(root)
    report = campaign.build_report(campaign.scan_results(root), ["standard", "rapt"], {"best": ["standard", "rapt"]})
    assert report["methods"] == ["standard", "rapt", "best"]
    assert report["best_of"]["best"] == {"rte": "rapt", "mrpc": "rapt", "stsb": "standard"}
    assert report["rows"]["best"]["tasks"]["rte"]["cells"] == report["rows"]["rapt"]["tasks"]["rte"]["cells"]
    assert report["rows"]["best"]["average"] == pytest.approx((71.5 + 85.75 + 45.0) / 3)
    assert all("best" not in (c["a"], c["b"]) for c in report["paired"])  # never compared with its members
    assert "| best |" not in campaign.per_seed_markdown(report)  # it would repeat its members' runs

    # the choice uses the seeds both members have: a lucky third standard seed does not win it
    _write_run(root, "rte", "standard", 3, [{"acc": 0.99}])
    report = campaign.build_report(campaign.scan_results(root), ["standard", "rapt"], {"best": ["standard", "rapt"]})
    assert report["best_of"]["best"]["rte"] == "rapt"
    assert report["rows"]["standard"]["tasks"]["rte"]["cells"][0]["mean"] == pytest.approx(78.0)


def test_paper_rows_match_the_published_average():
    """The paper's Average column is the mean of the 12 numbers of its row."""
    for name, row in campaign.PAPER_DEV.items():
        numbers = [v for t in campaign.TASK_ORDER for v in row[t]]
        assert len(numbers) == 12
        assert sum(numbers) / 12 == pytest.approx(row["average"], abs=0.051), name


def test_figure1_draws_from_metrics_files(tmp_path, capsys):
    root = tmp_path / "camp"
    _hand_written(root)
    out = tmp_path / "fig" / "figure1.png"
    assert figure1.main(["--root", str(root), "--tasks", "rte,mrpc", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    # rte standard, first evaluation: x = (60 + 120) / 2 s = 1.50 min, y = (60 + 70) / 2 = 65.0
    assert "standard     2 seed(s), 2 points: 1.50 min 65.0, 3.00 min 66.5" in text
    assert "rapt" in text and "smart" in text and f"wrote {out} (5 line(s))" in text


def test_figure1_with_nothing_to_draw_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(figure1.main, ["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "f.png")]) == 2
    assert "error: " in capsys.readouterr().err


def test_adopt_copies_a_matching_finished_run_and_refuses_the_rest(tmp_path, glue_dir, tiny_model_dir, capsys):
    """A run made outside the campaign (as run_<task>.sh makes one) joins the grid only if its config matches."""
    from mt_dnn.train import main as train_main

    common = ["--tasks", "rte", "--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--max_steps", "2",
              "--batch_size", "8", "--lr", "1e-3", "--seed", "1", "--cache_dir", str(tmp_path / "cache")]
    ok, other = tmp_path / "made-by-script", tmp_path / "other-lr"
    assert train_main([*common, "--method", "rapt", "--rapt_max_layer", "2", "--output_dir", str(ok),
                       "--warmup", "0.1", "--clip", "1.0"]) == 0   # defaults spelled out, as the scripts do
    assert train_main([*common[:-6], "--lr", "2e-3", "--seed", "1", "--method", "standard",
                       "--output_dir", str(other)]) == 0
    capsys.readouterr()
    grid = _grid(tmp_path / "grid.yml", seeds=[1])
    root = tmp_path / "camp"
    base = ["--grid", str(grid), "--root", str(root), "--model", str(tiny_model_dir), "--dry_run"]

    # a mismatch anywhere: one line naming the source and the field; nothing copied, not even the good one
    assert run_cli(campaign.main, [*base, "--adopt", str(ok), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(other) in err and "in lr: 0.002 (grid: 0.001)" in err
    assert not root.exists() or not list(root.glob("rte/*/s*"))

    assert campaign.main([*base, "--adopt", str(ok)]) == 0
    out = capsys.readouterr().out
    assert "adopted as rte/rapt/s1-" in out
    [folder] = root.glob("rte/rapt/s1-*")
    assert campaign.is_finished(folder) and (folder / "best").is_dir()
    assert json.loads((folder / "flags.json").read_text())["adopted_from"] == str(ok.resolve())
    assert [r.split()[0] for r in out.splitlines() if r.startswith(("done", "run"))] == ["run", "done"]
    # a copy of the copy (another campaign adopting it) still names the original run
    assert campaign.main(["--grid", str(grid), "--root", str(tmp_path / "camp2"), "--model", str(tiny_model_dir),
                          "--dry_run", "--adopt", str(folder)]) == 0
    [copy2] = (tmp_path / "camp2").glob("rte/rapt/s1-*")
    assert json.loads((copy2 / "flags.json").read_text())["adopted_from"] == str(ok.resolve())
    capsys.readouterr()
    # adopting again leaves the folder as is; an unfinished source is refused
    assert campaign.main([*base, "--adopt", str(ok)]) == 0
    assert "already finished; left as is" in capsys.readouterr().out
    lines = (ok / "metrics.jsonl").read_text().splitlines()
    (ok / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert run_cli(campaign.main, [*base, "--adopt", str(ok)]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_layer_sweep_plots_best_dev_against_max_layer(tmp_path, capsys):
    root = tmp_path / "camp"
    sweep = {0: [0.70, 0.74], 1: [0.72], 3: [0.80], 6: [0.76]}  # max_layer -> best acc per seed
    for k, seeds in sweep.items():
        for s, best in enumerate(seeds, start=1):
            _write_run(root, "mrpc", f"max{k}", s, [{"acc": best - 0.05, "f1": 0.8}, {"acc": best, "f1": 0.8}])
            (root / "mrpc" / f"max{k}" / f"s{s}" / "config.json").write_text(json.dumps(
                {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": k}}))
    # not points: another eta, another method, an unfinished run
    _write_run(root, "mrpc", "eta1.5", 1, [{"acc": 0.99, "f1": 0.9}])
    (root / "mrpc" / "eta1.5" / "s1" / "config.json").write_text(json.dumps(
        {"method": "rapt", "method_options": {"eta": 1.5, "max_layer": 2}}))
    _write_run(root, "mrpc", "standard", 1, [{"acc": 0.99, "f1": 0.9}])
    (root / "mrpc" / "standard" / "s1" / "config.json").write_text(json.dumps({"method": "standard"}))
    _write_run(root, "mrpc", "max2", 1, [{"acc": 0.99, "f1": 0.9}], finished=False)
    (root / "mrpc" / "max2" / "s1" / "config.json").write_text(json.dumps(
        {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 2}}))
    out = tmp_path / "layers.png"
    assert layers.main(["--root", str(root), "--tasks", "mrpc", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mrpc: embed 72.0, 1 72.0, 3 80.0, 6 76.0; best max_layer 3\n" in capsys.readouterr().out
    table = out.with_suffix(".md").read_text()
    assert "| max_layer | embed | 1 | 3 | 6 |" in table and "| acc | 72.0 [2] | 72.0 [1] | 80.0 [1] | 76.0 [1] |" in table
    # a second task with a partial sweep: both tables span the union of max_layers, a missing point is a "-"
    _write_run(root, "rte", "max2", 1, [{"acc": 0.55}])
    (root / "rte" / "max2" / "s1" / "config.json").write_text(json.dumps(
        {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 2}}))
    assert layers.main(["--root", str(root), "--tasks", "mrpc,rte", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mrpc: embed 72.0, 1 72.0, 3 80.0, 6 76.0; best max_layer 3; not run: 2" in printed
    assert "rte: 2 55.0; best max_layer 2; not run: embed, 1, 3, 6" in printed
    table = out.with_suffix(".md").read_text()
    assert table.count("| max_layer | embed | 1 | 2 | 3 | 6 |") == 2
    assert "| acc | 72.0 [2] | 72.0 [1] | - | 80.0 [1] | 76.0 [1] |" in table and "| acc | - | - | 55.0 [1] | - | - |" in table
    # a baseline campaign: standard on the sweep's seeds (1, 2) and one more seed
    base = tmp_path / "core"
    for s, acc in ((1, 0.70), (2, 0.74), (3, 0.78)):
        _write_run(base, "mrpc", "standard", s, [{"acc": acc, "f1": 0.8}])
    assert layers.main(["--root", str(root), "--tasks", "mrpc", "--out", str(out), "--baseline", str(base)]) == 0
    assert ("standard on the same seed(s) 1, 2: 72.0; over seeds 1, 2, 3: 74.0 ± 4.0 (the seed noise)."
            in out.with_suffix(".md").read_text())
    assert run_cli(layers.main, ["--root", str(root), "--tasks", "cola", "--out", str(out)]) == 2
    assert "no finished RAPT runs (eta 2) of cola" in capsys.readouterr().err


def test_report_has_training_time_and_ratios(tmp_path):
    root = tmp_path / "camp"
    # _write_run makes seed s take 6 x s seconds per step
    _write_run(root, "rte", "standard", 1, [{"acc": 0.6}])
    _write_run(root, "rte", "smart", 3, [{"acc": 0.6}, {"acc": 0.7}])
    _write_run(root, "rte", "rapt", 2, [{"acc": 0.6}])
    _write_run(root, "rte", "rapt_shared", 1, [{"acc": 0.6}], finished=False)  # no time: not finished
    report = campaign.build_report(campaign.scan_results(root), ["standard", "smart", "rapt"])
    times = report["times"]["rte"]
    assert set(times) == {"standard", "smart", "rapt"}
    assert times["smart"]["minutes"] == pytest.approx(6.0) and times["smart"]["s_per_step"] == pytest.approx(18.0)
    assert times["rapt"]["/standard"] == pytest.approx(2.0) and times["rapt"]["/smart"] == pytest.approx(2 / 3)
    md = campaign.report_markdown(report, "t")
    assert "| RTE | rapt | 1 | 2.0 | 12.00 | 2.00 | 0.67 |" in md


def test_dry_run_scales_a_method_measured_elsewhere_by_this_tasks_standard_cost(tmp_path, capsys):
    root = tmp_path / "camp"
    for task, method, seconds in (("rte", "standard", 2.0), ("rte", "rapt", 6.0), ("mrpc", "standard", 1.0)):
        folder = root / task / method / "s9-old"
        folder.mkdir(parents=True)
        (folder / "flags.json").write_text(json.dumps(
            {"task": task, "method_name": method, "seed": 9, "identity": {"method": method}}))
        (folder / "metrics.jsonl").write_text(json.dumps({"split": "train", "train_seconds": seconds * 10,
                                                          "steps": 10}) + "\n")
    grid = _grid(tmp_path / "grid.yml", tasks=["mrpc", "stsb"], seeds=[1],
                 flags={"epochs": 1, "max_train_samples": 80}, methods={"rapt": {"method": "rapt"}})
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"stsb": {"standard": 0.5}}))
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--dry_run", "--step_costs", str(costs)]) == 0
    out = capsys.readouterr().out
    mrpc = next(ln for ln in out.splitlines() if "mrpc/rapt/" in ln)
    stsb = next(ln for ln in out.splitlines() if "stsb/rapt/" in ln)
    # mrpc: measured standard 1.0 s x (rte's rapt/standard = 3.0); stsb: --step_costs standard 0.5 x 3.0
    assert "3.000" in mrpc and "standard x 3.00 (rte)" in mrpc
    assert "1.500" in stsb and "standard x 3.00 (rte)" in stsb


def _fake_training(calls: list):
    """A stand-in for the training subprocess: it records the run folder and writes a finished metrics file."""

    def fake_run(cmd, stdout, stderr, env):
        folder = Path(cmd[cmd.index("--output_dir") + 1])
        calls.append(folder)
        assert (folder / campaign.LOCK_NAME).is_file()  # held while training
        recs = [{"epoch": 0, "step": 2, "task": "rte", "split": "dev", "split_name": "dev", "train_seconds": 1.0,
                 "metrics": {"acc": 0.5}}, {"epoch": 0, "task": "rte", "split": "train", "steps": 2,
                                           "train_seconds": 1.0, "loss": 0.5, "reg_loss": 0.0}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return campaign.subprocess.CompletedProcess(cmd, 0)

    return fake_run


def test_seeds_slice_the_grid_and_locked_runs_are_left_to_their_process(tmp_path, monkeypatch, capsys):
    calls: list[Path] = []
    monkeypatch.setattr(campaign.subprocess, "run", _fake_training(calls))
    grid = _grid(tmp_path / "grid.yml", seeds=[1, 2, 3])
    root = tmp_path / "camp"
    runs = campaign.plan_runs(campaign.load_grid(grid), root)
    first = {r.label: r.folder for r in runs if r.seed == 2}
    std2, rapt2 = first[next(k for k in first if "/standard/" in k)], first[next(k for k in first if "/rapt/" in k)]

    # another live process on this host (our own pid stands in for it) is training standard seed 2
    std2.mkdir(parents=True)
    (std2 / campaign.LOCK_NAME).write_text(f"{campaign.socket.gethostname()}:{campaign.os.getpid()}\n")
    assert campaign.run_status(std2) == "busy"
    base = ["--grid", str(grid), "--root", str(root)]
    assert campaign.main([*base, "--dry_run", "--seeds", "2"]) == 0
    assert "2 runs: 0 done, 1 running now, 0 to resume, 1 to run" in capsys.readouterr().out

    # --max_runs 1 on seed 2 passes the busy run by and trains the next one; its lock is gone afterwards
    assert campaign.main([*base, "--seeds", "2", "--max_runs", "1"]) == 0
    assert calls == [rapt2] and not (rapt2 / campaign.LOCK_NAME).exists()
    assert (std2 / campaign.LOCK_NAME).exists() and not campaign.is_finished(std2)

    # a lock left by a dead process is stale: the run is taken over
    dead = campaign.subprocess.Popen([campaign.sys.executable, "-c", "pass"])
    dead.wait()
    (std2 / campaign.LOCK_NAME).write_text(f"{campaign.socket.gethostname()}:{dead.pid}\n")
    assert campaign.run_status(std2) == "run"
    assert campaign.main([*base, "--seeds", "2"]) == 0
    assert calls == [rapt2, std2] and campaign.is_finished(std2)
    assert all(r.seed == 2 for r in campaign.plan_runs(campaign.load_grid(grid), root, seeds=[2]))


@pytest.mark.parametrize("seeds,message", [("4", "seed(s) 4 not in the grid(s) (1, 2, 3)"),
                                           ("one", "--seeds one: expected comma-separated integers")])
def test_bad_seeds_are_one_line_errors(tmp_path, capsys, seeds, message):
    grid = _grid(tmp_path / "grid.yml", seeds=[1, 2, 3])
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(tmp_path / "c"), "--seeds", seeds]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_shipped_grids_plan_and_share_runs_where_they_should(tmp_path):
    grids = sorted((Path(campaign.__file__).parent / "grids").glob("*.yml"))
    assert {g.stem for g in grids} >= {"core", "extra", "eta", "layers", "lr", "pilot", "table2"}
    plans = {g.stem: campaign.plan_runs(campaign.load_grid(g), tmp_path) for g in grids}
    assert all(plans.values())
    core = {(r.task, r.seed, r.name): r.folder for r in plans["core"]}
    eta = {(r.task, r.seed, r.name): r.folder for r in plans["eta"]}
    assert len(plans["core"]) == 36 and len(plans["eta"]) == 10
    # eta 2 in the sweep is the core grid's seed-1 RAPT run: the same folder, never trained twice
    assert eta[("rte", 1, "rapt")] == core[("rte", 1, "rapt")]
    assert eta[("mrpc", 1, "rapt_eta2.3")] != core[("mrpc", 1, "rapt")]
    assert campaign.load_grid(grids[[g.stem for g in grids].index("eta")]).best_of["rapt_best_eta"][2] == "rapt"


def test_several_grids_share_a_root_run_shared_cells_once_and_report_together(tmp_path, monkeypatch, capsys):
    calls: list[Path] = []
    monkeypatch.setattr(campaign.subprocess, "run", _fake_training(calls))
    core = _grid(tmp_path / "core.yml", seeds=[1, 2])
    sweep = _grid(tmp_path / "sweep.yml", seeds=[1], methods={
        "rapt": {"method": "rapt", "rapt_max_layer": 2}, "rapt_eta1": {"method": "rapt", "rapt_max_layer": 2,
                                                                       "rapt_eta": 1.0}},
        best_of={"rapt_best": ["rapt", "rapt_eta1"]})
    root = tmp_path / "camp"
    assert campaign.main(["--grid", str(core), str(sweep), "--root", str(root)]) == 0
    # core: 2 methods x 2 seeds; the sweep adds only rapt_eta1 (its rapt is core's seed-1 rapt run)
    assert len(calls) == 5 and len(set(calls)) == 5
    report = json.loads((root / "table2.json").read_text())
    assert report["methods"] == ["standard", "rapt", "rapt_eta1", "rapt_best"]
    assert report["best_of"]["rapt_best"] == {"rte": "rapt"}  # a tie (0.5 each): the earlier member
    # filters apply across the grids: rapt_eta1 lives only in the sweep, seed 2 only in core
    assert [r.name for r in campaign.plan_grids(
        [campaign.load_grid(core), campaign.load_grid(sweep)], root, methods=["rapt_eta1"])] == ["rapt_eta1"]
    assert {r.seed for r in campaign.plan_grids(
        [campaign.load_grid(core), campaign.load_grid(sweep)], root, seeds=[2])} == {2}
