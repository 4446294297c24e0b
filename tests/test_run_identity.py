"""What a run is: every TrainConfig field has one declared role, and the resume guard, a campaign folder's name and
adoption all follow it; the lock of a run folder names its training by pid, host and process start time."""
from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys

import psutil
import pytest
import yaml

from data_utils.task_def import load_task_defs
from experiments.rapt.grid import load_grid, plan_runs
from mt_dnn import run_folder
from mt_dnn.cli_utils import run_cli
from mt_dnn.config import TrainConfig
from mt_dnn.train import main


def test_every_config_field_has_one_declared_role():
    assert set(run_folder.ROLES) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(run_folder.ROLES.values()) <= {run_folder.RESULT, run_folder.PLACE, run_folder.RUNTIME}
    assert run_folder.ROLES["method_options"] == run_folder.RESULT  # every method option changes the result


# a value other than the default for every mt_dnn.train flag a grid may set (the campaign sets tasks, seed,
# output_dir and --resume itself; --overwrite contradicts --resume)
OTHER = {"method": "rapt", "glue_dir": "g2", "model": "some/encoder", "cache_dir": "c2", "bad_rows": "skip",
         "max_eval_samples": 9, "compile": "default",
         "max_seq_len": 64, "max_train_samples": 50, "pooling": "mean", "epochs": 2, "max_steps": 5, "batch_size": 4,
         "eval_batch_size": 7, "lr": 3e-4, "weight_decay": 0.1, "warmup": 0.2, "clip": 2.0, "optimizer": "adamax",
         "no_eval": True, "task_sampling": "uniform", "sampling_temperature": 3.0, "precision": "bf16",
         "grad_accumulation_steps": 2, "init_checkpoint": "ckpt", "max_bad_steps": 20, "save_every_steps": 5,
         "log_every": 3, "device": "cpu", "tf32": False, "rapt_eta": 1.5, "lora_dropout": 0.2}


def test_a_grid_flag_names_the_folder_exactly_when_resume_compares_it(tmp_path):
    """max_bad_steps (when a run gives up) must not start a new folder; a task definition's contents must."""
    rte = load_task_defs()["rte"].to_dict()
    rte["dropout"] = 0.3
    (tmp_path / "t.yml").write_text(yaml.safe_dump({"rte": rte}))
    other = {**OTHER, "task_def": [str(tmp_path / "t.yml")]}
    for f in dataclasses.fields(TrainConfig):  # a flag without a value above: one of its type
        if f.name not in other and f.name not in {"tasks", "seed", "output_dir", "resume", "overwrite",
                                                  "method_options", "world_size"}:
            d = f.default
            other[f.name] = (not d if isinstance(d, bool) else d + 1 if isinstance(d, (int, float)) else "elsewhere")

    def plan(flags: dict):
        grid = tmp_path / "g.yml"
        method = {"method": "rapt", **{k: v for k, v in flags.items() if k.startswith("rapt_")}}
        grid.write_text(yaml.safe_dump({"tasks": ["rte"], "seeds": [1], "methods": {"m": method},
                                        "flags": {"lr": 1e-4, **{k: v for k, v in flags.items()
                                                                 if not k.startswith("rapt_")}}}))
        [run] = plan_runs(load_grid(grid), tmp_path / "root")
        return run.folder, run.recipe(data=False)  # the data files: compared by --resume, not named by flags

    base_folder, base_recipe = plan({})
    for name, value in other.items():
        if name == "method":
            continue  # the grid's methods set it
        lora = {"lora_rank": 2} if name.startswith("lora_") and name != "lora_rank" else \
            {"task_sampling": "temperature"} if name == "sampling_temperature" else {}  # what it needs to apply
        folder, recipe = plan({**lora, name: value})
        without_it = plan(lora) if lora else (base_folder, base_recipe)
        assert (folder != without_it[0]) == (recipe != without_it[1]), name
    assert plan({"max_bad_steps": 20})[0] == base_folder
    assert plan({"task_def": other["task_def"]})[0] != base_folder


def _lock(folder, pid: int, started: float | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".lock").write_text(f"{pid} {socket.gethostname()} {started!r} -\n")


def _args(glue, model, out, cache):
    return ["--glue_dir", str(glue), "--model", str(model), "--output_dir", str(out), "--cache_dir", str(cache),
            "--tasks", "rte", "--lr", "1e-3", "--batch_size", "4", "--max_steps", "2", "--no_eval"]


def test_a_lock_whose_pid_is_another_process_now_is_taken_over(tmp_path, glue_dir, tiny_model_dir, capsys):
    out = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live, unrelated process
    try:
        started = psutil.Process(other.pid).create_time()
        _lock(out, other.pid, started)  # the lock of that very process: a training of this run
        assert run_folder.lock_holder(out) is not None
        assert run_cli(main, _args(glue_dir, tiny_model_dir, out, tmp_path / "c")) == 2
        assert f"is in use by another training (pid {other.pid}" in capsys.readouterr().err
        _lock(out, other.pid, started - 1.0)  # the wall clock stepped by a second since: still that training
        assert run_folder.lock_holder(out) is not None
        _lock(out, other.pid, started - 3600.0)  # a training that started an hour earlier under that pid: gone
        assert run_folder.lock_holder(out) is None
        assert run_cli(main, _args(glue_dir, tiny_model_dir, out, tmp_path / "c")) == 0
        err = capsys.readouterr().err
        assert f"taking over the stale lock of pid {other.pid} on {socket.gethostname()} (that pid is another " \
               "process now)" in err
        assert not (out / ".lock").exists() and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_lock_names_its_training_and_a_requeued_slurm_job_takes_its_own_back(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "4251")
    lock = run_folder.RunLock(out)
    lock.acquire()
    holder = run_folder.read_lock(out)
    assert (holder.pid, holder.host, holder.job) == (lock.me.pid, socket.gethostname(), "4251")
    assert holder.started == pytest.approx(psutil.Process().create_time(), abs=1.0)  # boot time moves with NTP
    lock.release()
    out.mkdir()
    (out / ".lock").write_text("777 node17 12.5 4250\n")  # a training of another Slurm job on another node
    assert run_folder.lock_holder(out) is not None
    (out / ".lock").write_text("777 node17 12.5 4251\n")  # this job before Slurm requeued it
    assert run_folder.lock_holder(out) is None


def test_a_task_definition_files_contents_name_the_folder_not_its_path(tmp_path):
    """Editing the file a grid's task_def points at (the task's dropout) makes another folder, as --resume would
    refuse the old run; the same contents under another path keep the folder."""
    rte = load_task_defs()["rte"].to_dict()

    def folder(path, dropout):
        path.write_text(yaml.safe_dump({"rte": {**rte, "dropout": dropout}}))
        grid = tmp_path / "g.yml"
        grid.write_text(yaml.safe_dump({"tasks": ["rte"], "seeds": [1], "methods": {"s": {"method": "standard"}},
                                        "flags": {"lr": 1e-4, "task_def": [str(path)]}}))
        [run] = plan_runs(load_grid(grid), tmp_path / "root")
        return run.folder

    first = folder(tmp_path / "t.yml", 0.1)
    assert folder(tmp_path / "t.yml", 0.5) != first
    assert folder(tmp_path / "copy.yml", 0.1) == first
