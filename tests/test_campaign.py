"""The RAPT campaign runner (experiments.rapt.campaign): planning, running, resuming, locks, dry runs, adopting.

One test runs real ``mt_dnn.train`` subprocesses (tiny BERT, fixture GLUE files, 2 steps each) through the local
pool; the others replace the training subprocess (``experiments.rapt.jobs.start_training``, called by the pool's
workers in this process) by a stand-in or run nothing. Executors, GPU slots and
Slurm are in test_campaign_launch.py.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_utils.task_def import ConfigError
from experiments.rapt import campaign, jobs, launch
from experiments.rapt.grid import load_grid, plan_grids, plan_runs
from mt_dnn import run_folder
from mt_dnn.run_folder import is_finished
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
    """Real trainings, two at a time on two (named) GPUs; then a half-finished grid: one run finished, one with a
    checkpoint only, two not started: the rerun skips the first, resumes the second and starts the others."""
    grid = _grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    base = ["--grid", str(grid), "--root", str(root), "--glue_dir", str(glue_dir), "--model", str(tiny_model_dir),
            "--gpus", "0,1"]
    assert campaign.main([*base, "--jobs", "2", "--max_runs", "2", "--keep_checkpoints"]) == 0

    runs = plan_runs(load_grid(grid), root, model=str(tiny_model_dir), glue_dir=str(glue_dir))
    assert [(r.seed, r.name) for r in runs] == [(1, "standard"), (1, "rapt"), (2, "standard"), (2, "rapt")]
    first = _progress(root)
    assert sorted(s for _, _, s, _ in first) == ["done"] * 2 + ["start"] * 2
    devices = set()
    for run in runs[:2]:
        assert is_finished(run.folder) and (run.folder / "checkpoint").is_dir()
        info = json.loads((run.folder / "flags.json").read_text())
        assert info["identity"]["max_steps"] == 2 and run.folder.name.endswith(info["hash"])
        [header] = [ln for ln in (run.folder / "campaign.out").read_text().splitlines() if ln.startswith("$ ")]
        assert header.endswith("--resume") and " -m mt_dnn.train " in header
        devices.add(header.split()[1])
    assert devices == {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}  # side by side: one GPU each
    assert not any(r.folder.exists() for r in runs[2:])

    # seed 1 rapt loses its train record: a checkpoint at step 1 is left
    victim = runs[1].folder
    assert (victim / "checkpoint" / "trainer_state.pt").is_file()
    lines = (victim / "metrics.jsonl").read_text().splitlines()
    (victim / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert [launch.run_status(r.folder) for r in runs] == ["done", "resume", "run", "run"]
    assert campaign.main([*base, "--jobs", "2"]) == 0
    second = _progress(root)[len(first):]
    events = {(r, s) for _, r, s, _ in second}
    assert {(runs[0].label, "skip"), (runs[1].label, "resume"), (runs[1].label, "done"), (runs[2].label, "start"),
            (runs[2].label, "done"), (runs[3].label, "start"), (runs[3].label, "done")} == events
    assert "resumed from" in (victim / "campaign.out").read_text()  # logged before train.log opens
    assert all(is_finished(r.folder) for r in runs)
    assert not (victim / "checkpoint").exists() and (runs[0].folder / "checkpoint").exists()  # kept when asked
    report = json.loads((root / "report.json").read_text())
    assert report["methods"] == ["standard", "rapt"] and report["rows"]["rapt"]["tasks"]["rte"]["seeds"] == [1, 2]

    # a rerun starts nothing: every run is logged as skipped
    assert campaign.main(base) == 0
    assert [s for _, _, s, _ in _progress(root)[len(first) + len(second):]] == ["skip"] * 4


def test_a_failed_run_is_logged_and_the_campaign_exits_1(tmp_path, monkeypatch, capsys):
    """No real training here: the subprocess is replaced by one that fails at once."""
    calls = []

    def fake_run(cmd, out, env):
        calls.append(cmd)
        out.write("error: boom\n")
        return _Ended(2)

    monkeypatch.setattr(jobs, "start_training", fake_run)
    grid = _grid(tmp_path / "grid.yml", seeds=[1])
    root = tmp_path / "camp"
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--gpus", "none"]) == 1
    assert len(calls) == 2 and all(c[1:3] == ["-m", "mt_dnn.train"] and c[-1] == "--resume" for c in calls)
    assert [s for _, _, s, _ in _progress(root)].count("failed rc=2") == 2
    assert "2 run(s) failed" in capsys.readouterr().err
    folders = _run_folders(root)
    assert len(folders) == 2 and all(launch.run_status(f) == "run" for f in folders)  # nothing written: fresh next


def test_subprocesses_get_one_thread_when_side_by_side_on_cpu():
    assert launch.local_env(2, on_gpus=False)["OMP_NUM_THREADS"] == "1"
    assert launch.local_env(1, on_gpus=False) == {"MT_DNN_NO_TQDM": "1"}  # alone: torch's own thread count
    cores = launch.os.cpu_count() or 1
    assert launch.local_env(2, on_gpus=True)["MKL_NUM_THREADS"] == str(max(1, cores // 2))


def test_folder_hash_follows_the_hyperparameters(tmp_path, glue_dir):
    def folders(**flags) -> dict[str, Path]:
        g = load_grid(_grid(tmp_path / "g.yml", flags=flags))
        return {f"{r.name}{r.seed}": r.folder for r in plan_runs(g, tmp_path / "root")}

    a = folders(lr=3.0e-5, epochs=2)
    assert folders(lr=0.00003, epochs=2, cache_dir="elsewhere", log_every=7) == a  # same values, other spelling
    with pytest.raises(ConfigError, match="lr must be a number"):  # YAML's 3e-5 is text, not a number
        folders(lr="3e-5", epochs=2)
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
    g = load_grid(grid)
    assert [(r.task, r.name) for r in plan_runs(g, tmp_path / "camp")] == [
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


def test_a_method_can_have_its_own_seeds_and_the_other_methods_keep_the_grids(tmp_path, capsys):
    grid = _grid(tmp_path / "grid.yml", tasks=["rte", "mrpc"], seeds=[1],
                 methods={"standard": {"method": "standard"},
                          "shared": {"method": "rapt", "rapt_share_lower_layers": True, "tasks": ["mrpc"],
                                     "seeds": [1, 2, 3]}})
    g = load_grid(grid)
    cells = [(r.seed, r.task, r.name) for r in plan_runs(g, tmp_path / "camp")]
    assert cells == [(1, "rte", "standard"), (1, "mrpc", "standard"), (1, "mrpc", "shared"),
                     (2, "mrpc", "shared"), (3, "mrpc", "shared")]
    # a method's own seed can be picked with --seeds, and the folder of seed 1 is the same in both plans
    only3 = plan_grids([g], tmp_path / "camp", seeds=[3])
    assert [(r.seed, r.task, r.name) for r in only3] == [(3, "mrpc", "shared")]
    assert {r.folder.name for r in plan_runs(g, tmp_path / "camp") if r.name == "shared"} == {
        f"s{k}-{only3[0].folder.name.split('-', 1)[1]}" for k in (1, 2, 3)}
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(tmp_path / "r"), "--dry_run",
                                   "--seeds", "4"]) == 2
    assert "seed(s) 4 not in the grid" in capsys.readouterr().err


def test_dry_run_sees_started_runs(tmp_path, capsys):
    grid = _grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    runs = plan_runs(load_grid(grid), root)
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
    ({"methods": {"x": {"method": "standard", "no_such_flag": 1}}}, "methods.x: unknown key(s) no_such_flag"),
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"methods": {"x": {"method": "standard", "tasks": ["mrpc"]}}}, "method x: tasks must be a non-empty subset"),
    ({"methods": {"x": {"method": "standard", "seeds": []}}}, "method x: seeds must be a non-empty list"),
    ({"methods": {"x": {"method": "standard", "seeds": ["one"]}}}, "method x: seeds must be a non-empty list"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, change, message):
    grid = _grid(tmp_path / "grid.yml", **change)
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(tmp_path / "r"), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err

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
    base = ["--grid", str(grid), "--root", str(root), "--model", str(tiny_model_dir), "--glue_dir", str(glue_dir),
            "--dry_run"]

    # a mismatch anywhere: one line naming the source and the field; nothing copied, not even the good one
    assert run_cli(campaign.main, [*base, "--adopt", str(ok), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(other) in err and "in lr: 0.002 (grid: 0.001)" in err
    assert not root.exists() or not list(root.glob("rte/*/s*"))

    # a dry run checks the source and shows its cell as 'adopt' in the plan, but copies nothing
    assert campaign.main([*base, "--adopt", str(ok)]) == 0
    out = capsys.readouterr().out
    assert f"{ok}: would adopt as rte/rapt/s1-" in out and "(a dry run copies nothing)" in out
    assert not list(root.glob("rte/*/s*")) and not list(root.glob("rte/*/*.adopting"))
    assert [r.split()[0] for r in out.splitlines() if r.startswith(("adopt", "run"))] == ["run", "adopt"]
    assert "2 runs: 0 done, 1 to adopt, 0 to resume, 1 to run" in out
    # for real (with --report, which trains nothing either)
    real = [a for a in base if a != "--dry_run"] + ["--report"]
    assert campaign.main([*real, "--adopt", str(ok)]) == 0
    out = capsys.readouterr().out
    assert "adopted as rte/rapt/s1-" in out
    [folder] = root.glob("rte/rapt/s1-*")
    assert is_finished(folder) and (folder / "best").is_dir()
    assert json.loads((folder / "flags.json").read_text())["adopted_from"] == str(ok.resolve())
    assert campaign.main(base) == 0  # the plan now has it done
    assert [r.split()[0] for r in capsys.readouterr().out.splitlines() if r.startswith(("done", "run"))] == [
        "run", "done"]
    # a copy of the copy (another campaign adopting it) still names the original run
    assert campaign.main(["--grid", str(grid), "--root", str(tmp_path / "camp2"), "--model", str(tiny_model_dir),
                          "--glue_dir", str(glue_dir), "--report", "--adopt", str(folder)]) == 0
    [copy2] = (tmp_path / "camp2").glob("rte/rapt/s1-*")
    assert json.loads((copy2 / "flags.json").read_text())["adopted_from"] == str(ok.resolve())
    capsys.readouterr()
    # adopting again leaves the folder as is (dry run or not); an unfinished source is refused
    for args in (base, real):
        assert campaign.main([*args, "--adopt", str(ok)]) == 0
        assert "already finished; left as is" in capsys.readouterr().out
    lines = (ok / "metrics.jsonl").read_text().splitlines()
    (ok / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert run_cli(campaign.main, [*base, "--adopt", str(ok)]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_adopt_refuses_a_run_made_on_other_data(tmp_path, glue_dir, tiny_model_dir, capsys):
    """The same flags on another copy of RTE (one training row changed): not the grid cell's run."""
    import shutil

    from mt_dnn.train import main as train_main

    other_glue = tmp_path / "other-glue"
    shutil.copytree(glue_dir, other_glue)
    train = other_glue / "RTE" / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("\t", "\tchanged ", 1)  # the first row's first sentence
    train.write_text("".join(lines))
    src = tmp_path / "made-elsewhere"
    assert train_main(["--tasks", "rte", "--glue_dir", str(other_glue), "--model", str(tiny_model_dir),
                       "--max_steps", "2", "--batch_size", "8", "--lr", "1e-3", "--seed", "1", "--method", "standard",
                       "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(src)]) == 0
    capsys.readouterr()
    grid = _grid(tmp_path / "grid.yml", seeds=[1])
    root = tmp_path / "camp"
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(root), "--model", str(tiny_model_dir),
                                   "--glue_dir", str(glue_dir), "--dry_run", "--adopt", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src}: closest grid cell rte/standard/s1-") and err.endswith(
        " reads other data: rte/train differ from the grid's GLUE folder"), err
    assert not list(root.glob("rte/*/s*"))

def test_adopt_refuses_a_run_whose_encoder_files_differ(tmp_path, glue_dir, tiny_model_dir, capsys):
    """The grid's --model path, but the run was made when that folder held another encoder (its config edited)."""
    import shutil

    from mt_dnn.train import main as train_main

    encoder = shutil.copytree(tiny_model_dir, tmp_path / "enc")
    src = tmp_path / "made-earlier"
    assert train_main(["--tasks", "rte", "--glue_dir", str(glue_dir), "--model", str(encoder), "--max_steps", "2",
                       "--batch_size", "8", "--lr", "1e-3", "--seed", "1", "--method", "standard",
                       "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(src)]) == 0
    made_with = json.loads((src / "config.json").read_text())["recipe"]["model_files"]
    config = json.loads((encoder / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({**config, "attention_probs_dropout_prob": 0.5}))
    capsys.readouterr()
    grid = _grid(tmp_path / "grid.yml", seeds=[1])
    root = tmp_path / "camp"
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(root), "--model", str(encoder),
                                   "--glue_dir", str(glue_dir), "--dry_run", "--adopt", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src}: closest grid cell rte/standard/s1-") and err.endswith(
        f" differs in model_files: {made_with!r} (grid: {run_folder.model_digest(encoder)!r})"), err
    assert not list(root.glob("rte/*/s*"))


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


class _Ended:
    """A training process that has already ended with ``returncode``."""

    def __init__(self, returncode: int):
        self.returncode, self.pid = returncode, 0

    def wait(self, timeout=None) -> int:
        return self.returncode

    def poll(self) -> int:
        return self.returncode


def _fake_training(calls: list):
    """A stand-in for the training subprocess: it records the run folder and writes a finished metrics file."""

    def fake_run(cmd, out, env):
        folder = Path(cmd[cmd.index("--output_dir") + 1])
        calls.append(folder)
        recs = [{"epoch": 0, "step": 2, "task": "rte", "split": "dev", "split_name": "dev", "train_seconds": 1.0,
                 "metrics": {"acc": 0.5}}, {"epoch": 0, "task": "rte", "split": "train", "steps": 2,
                                           "train_seconds": 1.0, "loss": 0.5, "reg_loss": 0.0}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return _Ended(0)

    return fake_run


def test_seeds_slice_the_grid_and_locked_runs_are_left_to_their_process(tmp_path, monkeypatch, capsys):
    calls: list[Path] = []
    monkeypatch.setattr(jobs, "start_training", _fake_training(calls))
    grid = _grid(tmp_path / "grid.yml", seeds=[1, 2, 3])
    root = tmp_path / "camp"
    runs = plan_runs(load_grid(grid), root)
    first = {r.label: r.folder for r in runs if r.seed == 2}
    std2, rapt2 = first[next(k for k in first if "/standard/" in k)], first[next(k for k in first if "/rapt/" in k)]

    # a live training on this host (our own pid stands in for it) holds standard seed 2: the trainer's own lock
    std2.mkdir(parents=True)
    (std2 / ".lock").write_text(f"{launch.os.getpid()} {socket.gethostname()}\n")
    assert launch.run_status(std2) == "busy"
    base = ["--grid", str(grid), "--root", str(root), "--gpus", "none"]
    assert campaign.main([*base, "--dry_run", "--seeds", "2"]) == 0
    assert "2 runs: 0 done, 1 running now, 0 to resume, 1 to run" in capsys.readouterr().out

    # --max_runs 1 on seed 2 passes the busy run by and trains the next one
    assert campaign.main([*base, "--seeds", "2", "--max_runs", "1"]) == 0
    assert calls == [rapt2] and (std2 / ".lock").exists() and not is_finished(std2)

    # a lock of a dead process is stale: the run is started (the trainer takes the lock over)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (std2 / ".lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    assert launch.run_status(std2) == "run"
    assert campaign.main([*base, "--seeds", "2"]) == 0
    assert calls == [rapt2, std2] and is_finished(std2)
    assert all(r.seed == 2 for r in plan_runs(load_grid(grid), root, seeds=[2]))


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
    plans = {g.stem: plan_runs(load_grid(g), tmp_path) for g in grids}
    assert all(plans.values())
    core = {(r.task, r.seed, r.name): r.folder for r in plans["core"]}
    eta = {(r.task, r.seed, r.name): r.folder for r in plans["eta"]}
    assert len(plans["core"]) == 36 and len(plans["eta"]) == 10
    # eta 2 in the sweep is the core grid's seed-1 RAPT run: the same folder, never trained twice
    assert eta[("rte", 1, "rapt")] == core[("rte", 1, "rapt")]
    assert eta[("mrpc", 1, "rapt_eta2.3")] != core[("mrpc", 1, "rapt")]
    assert load_grid(grids[[g.stem for g in grids].index("eta")]).best_of["rapt_best_eta"][2] == "rapt"


def test_several_grids_share_a_root_run_shared_cells_once_and_report_together(tmp_path, monkeypatch, capsys):
    calls: list[Path] = []
    monkeypatch.setattr(jobs, "start_training", _fake_training(calls))
    core = _grid(tmp_path / "core.yml", seeds=[1, 2])
    sweep = _grid(tmp_path / "sweep.yml", seeds=[1], methods={
        "rapt": {"method": "rapt", "rapt_max_layer": 2}, "rapt_eta1": {"method": "rapt", "rapt_max_layer": 2,
                                                                       "rapt_eta": 1.0}},
        best_of={"rapt_best": ["rapt", "rapt_eta1"]})
    root = tmp_path / "camp"
    assert campaign.main(["--grid", str(core), str(sweep), "--root", str(root), "--gpus", "none"]) == 0
    # core: 2 methods x 2 seeds; the sweep adds only rapt_eta1 (its rapt is core's seed-1 rapt run)
    assert len(calls) == 5 and len(set(calls)) == 5
    report = json.loads((root / "report.json").read_text())
    assert report["methods"] == ["standard", "rapt", "rapt_eta1", "rapt_best"]
    assert report["best_of"]["rapt_best"] == {"rte": "rapt"}  # a tie (0.5 each): the earlier member
    # filters apply across the grids: rapt_eta1 lives only in the sweep, seed 2 only in core
    assert [r.name for r in plan_grids(
        [load_grid(core), load_grid(sweep)], root, methods=["rapt_eta1"])] == ["rapt_eta1"]
    assert {r.seed for r in plan_grids(
        [load_grid(core), load_grid(sweep)], root, seeds=[2])} == {2}


def test_archived_cells_are_not_trained_again_unless_a_folder_or_no_archive_says_so(tmp_path, monkeypatch, capsys):
    """With --archive, a cell whose result is archived and whose folder is gone is done: the dry run says
    'archived' and the campaign trains only the others; without --archive the same cell is trained."""
    calls: list[Path] = []
    monkeypatch.setattr(jobs, "start_training", _fake_training(calls))
    grid = _grid(tmp_path / "grid.yml", seeds=[1, 2])
    root = tmp_path / "camp"
    runs = {(r.name, r.seed): r for r in plan_runs(load_grid(grid), root)}
    arch = tmp_path / "archive.json"
    arch.write_text(json.dumps({"source": "test", "runs": [
        {"task": "rte", "method": "standard", "seed": 1, "epoch": 0, "metrics": {"acc": 0.61}},
        {"task": "rte", "method": "rapt", "seed": 7, "epoch": 0, "metrics": {"acc": 0.6}}]}))  # not in the grid
    base = ["--grid", str(grid), "--root", str(root), "--gpus", "none", "--archive", str(arch)]
    assert campaign.main([*base, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"archived {runs['standard', 1].label}" in out
    assert "4 runs: 0 done, 1 archived, 0 to resume, 3 to run" in out
    assert not root.exists() or not any(root.rglob("flags.json"))
    assert campaign.main(base) == 0
    assert sorted(calls) == sorted(runs[k].folder for k in [("rapt", 1), ("standard", 2), ("rapt", 2)])
    table = (root / "report.md").read_text()
    assert "| standard | 61.0" in table  # the archived result fills the cell in the report
    # without --archive, the cell has no result and no folder: it is trained
    calls.clear()
    assert campaign.main(base[:-2]) == 0
    assert calls == [runs["standard", 1].folder]


def test_one_method_name_with_other_flags_in_two_grids_is_refused(tmp_path, capsys):
    """The report keeps one row per name: two recipes under one name would be averaged into it."""
    a = _grid(tmp_path / "a.yml", seeds=[1, 2], methods={"rapt": {"method": "rapt", "rapt_eta": 1.0}})
    b = _grid(tmp_path / "b.yml", seeds=[2, 3], methods={"rapt": {"method": "rapt", "rapt_eta": 2.0}})
    assert run_cli(campaign.main, ["--grid", str(a), str(b), "--root", str(tmp_path / "c"), "--dry_run"]) == 2
    assert capsys.readouterr().err.strip() == ("error: method rapt on rte, seed 2: two grids give it other flags "
                                               "(rapt_eta); one report row per name: rename it in one grid")


def test_the_command_lines_model_and_glue_folder_win_over_the_grids(tmp_path):
    grid = _grid(tmp_path / "g.yml", seeds=[1], model="grid-top", glue_dir="grid-top-glue",
                 flags={"max_steps": 2, "model": "grid-flags"}, methods={"standard": {"method": "standard"}},
                 task_flags={"rte": {"glue_dir": "grid-task-glue"}})
    [own] = plan_runs(load_grid(grid), tmp_path / "c")
    assert own.config.model == "grid-flags" and own.config.glue_dir == "grid-task-glue"  # the grid's flags win
    [cli] = plan_runs(load_grid(grid), tmp_path / "c", model="cli-model", glue_dir="cli-glue")
    assert cli.config.model == "cli-model" and cli.config.glue_dir == "cli-glue"
    assert cli.folder != own.folder  # another encoder: another cell folder


def test_print_commands_max_runs_counts_only_runs_left_to_do(tmp_path, capsys):
    grid = _grid(tmp_path / "g.yml", seeds=[1, 2])
    root = tmp_path / "c"
    runs = plan_runs(load_grid(grid), root)
    for run in runs[:2]:  # seed 1 is finished
        run.folder.mkdir(parents=True)
        (run.folder / "metrics.jsonl").write_text(json.dumps({"split": "train", "steps": 2}) + "\n")
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--print_commands", "--max_runs", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and str(runs[2].folder) in printed[0]


def test_an_archived_cell_never_stands_in_for_a_finished_folder_or_outside_the_slice(tmp_path, capsys):
    """A slice (--tasks) reports only its cells; a finished folder under ROOT wins over the archive even where
    these grids do not plan it (another grid's, or made with other flags)."""
    grid = _grid(tmp_path / "g.yml", tasks=["rte", "mrpc"], seeds=[1], methods={"standard": {"method": "standard"}})
    root = tmp_path / "c"
    runs = {r.task: r for r in plan_runs(load_grid(grid), root)}
    for task, acc in (("rte", 0.6), ("mrpc", 0.8)):
        folder = runs[task].folder
        folder.mkdir(parents=True)
        common = {"epoch": 0, "step": 1, "task": task, "method": "standard", "seed": 1, "train_seconds": 1.0}
        (folder / "metrics.jsonl").write_text(
            json.dumps({**common, "split": "dev", "split_name": "dev", "metrics": {"acc": acc, "f1": acc}}) + "\n" +
            json.dumps({**common, "split": "train", "steps": 1, "loss": 0.5, "reg_loss": 0.0}) + "\n")
    arch = tmp_path / "a.json"
    arch.write_text(json.dumps({"source": "test", "runs": [
        {"task": "mrpc", "method": "standard", "seed": 1, "epoch": 0, "metrics": {"acc": 0.5, "f1": 0.5}},
        {"task": "rte", "method": "old", "seed": 1, "epoch": 0, "metrics": {"acc": 0.7}}]}))
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--report", "--archive", str(arch),
                          "--tasks", "rte"]) == 0
    report = json.loads((root / "report.json").read_text())
    assert set(report["rows"]["standard"]["tasks"]) == {"rte"}  # the slice, not the archive's mrpc (0.50)
    assert report["rows"]["old"]["tasks"]["rte"]["cells"][0]["values"] == [70.0]
    other = tmp_path / "other.yml"  # a grid without mrpc: ROOT's finished mrpc folder still wins
    _grid(other, tasks=["rte"], seeds=[1], methods={"standard": {"method": "standard"}})
    assert campaign.main(["--grid", str(other), "--root", str(root), "--report", "--archive", str(arch)]) == 0
    assert "mrpc" not in json.loads((root / "report.json").read_text())["rows"]["standard"]["tasks"]
