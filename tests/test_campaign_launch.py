"""How a campaign runs its runs (experiments.rapt.launch, .jobs, .cluster): submitit's LocalExecutor with one GPU per
run side by side, and Slurm job arrays, all without GPUs or a cluster.

A stand-in training script replaces ``python -m mt_dnn.train`` (``launch.train_command``): it records what its
process saw (CUDA_VISIBLE_DEVICES, threads, start and end times) and writes a finished metrics.jsonl. Slurm's
``sbatch``, ``srun`` and ``squeue`` are stand-in scripts on PATH: sbatch keeps the script submitit wrote and
answers with a job id.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.rapt import campaign, jobs, launch
from experiments.rapt.grid import load_grid, plan_runs
from experiments.rapt.results import is_finished
from mt_dnn.cli_utils import run_cli

FAKE_TRAIN = r'''
import json, os, sys, time
argv = sys.argv[1:]
out = argv[argv.index("--output_dir") + 1]
started = time.time()
resumed = os.path.isdir(os.path.join(out, "checkpoint"))
time.sleep(SLEEP)
recs = [{"epoch": 0, "step": 2, "task": "rte", "split": "dev", "split_name": "dev", "train_seconds": 1.0,
         "metrics": {"acc": 0.5}},
        {"epoch": 0, "task": "rte", "split": "train", "steps": 2, "train_seconds": 1.0, "loss": 0.5, "reg_loss": 0.0}]
with open(os.path.join(out, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in recs))
seen = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MT_DNN_NO_TQDM")}
with open(os.path.join(out, "seen.json"), "w") as f:
    json.dump({"env": seen, "start": started, "end": time.time(), "resumed": resumed, "argv": argv}, f)
'''


def _grid(path: Path, seeds=(1, 2)) -> Path:
    path.write_text(yaml.safe_dump(
        {"tasks": ["rte"], "seeds": list(seeds), "flags": {"max_steps": 2, "batch_size": 8},
         "methods": {"standard": {"method": "standard"}, "rapt": {"method": "rapt", "rapt_max_layer": 2}}}))
    return path


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """The training command becomes the stand-in script (sleeping 1.5 s, long enough for two to overlap)."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN.replace("SLEEP", "1.5"))

    def command(run, gpus_per_job=1):
        return [sys.executable, str(script), *run.argv, "--output_dir", str(run.folder), "--resume"]

    monkeypatch.setattr(launch, "train_command", command)
    return script


def _seen(folder: Path) -> dict:
    return json.loads((folder / "seen.json").read_text())


def _progress(root: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")[1:3]) for line in (root / "progress.log").read_text().splitlines()]


def test_runs_side_by_side_each_get_their_own_gpu(tmp_path, fake_train):
    grid = _grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--gpus", "0,1"]) == 0  # --jobs: one per GPU
    runs = plan_runs(load_grid(grid), root)
    seen = [_seen(r.folder) for r in runs]
    assert all(is_finished(r.folder) for r in runs)
    assert {s["env"]["CUDA_VISIBLE_DEVICES"] for s in seen} == {"0", "1"}
    cores = os.cpu_count() or 1
    assert all(s["env"]["OMP_NUM_THREADS"] == str(max(1, cores // 2)) and s["env"]["MT_DNN_NO_TQDM"] == "1"
               for s in seen)
    # two ran at once, and no two runs that overlapped in time shared a GPU
    overlaps = [(a, b) for a, b in itertools.combinations(seen, 2) if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlaps and all(a["env"]["CUDA_VISIBLE_DEVICES"] != b["env"]["CUDA_VISIBLE_DEVICES"] for a, b in overlaps)
    for run, s in zip(runs, seen):  # the run's own log names its GPU
        device = s["env"]["CUDA_VISIBLE_DEVICES"]
        assert f"$ CUDA_VISIBLE_DEVICES={device} " in (run.folder / "campaign.out").read_text()
        assert s["argv"][-3:] == ["--output_dir", str(run.folder), "--resume"]
    assert sorted(_progress(root)) == sorted([(r.label, s) for r in runs for s in ("start", "done")])
    assert (root / ".submitit").is_dir()  # submitit's job logs and pickles


def test_resuming_a_half_finished_grid_on_cpu_side_by_side(tmp_path, fake_train):
    """One run finished, one with a checkpoint, one busy (a live training holds its lock), one not started."""
    grid = _grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    runs = plan_runs(load_grid(grid), root)
    done, ckpt, busy, fresh = (r.folder for r in runs)
    for folder in (done, ckpt, busy):
        folder.mkdir(parents=True)
    (done / "metrics.jsonl").write_text(json.dumps({"split": "train", "steps": 2, "train_seconds": 1}) + "\n")
    (ckpt / "checkpoint").mkdir()
    (ckpt / "metrics.jsonl").write_text(json.dumps({"split": "dev", "step": 1}) + "\n")
    (busy / ".lock").write_text(f"{os.getpid()} {jobs.socket.gethostname()}\n")
    assert [launch.run_status(f) for f in (done, ckpt, busy, fresh)] == ["done", "resume", "busy", "run"]
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--gpus", "none", "--jobs", "2"]) == 0
    assert not (done / "seen.json").exists() and not (busy / "seen.json").exists()
    assert _seen(ckpt)["resumed"] and not _seen(fresh)["resumed"]
    assert _seen(ckpt)["env"]["CUDA_VISIBLE_DEVICES"] == "" and _seen(ckpt)["env"]["OMP_NUM_THREADS"] == "1"
    events = _progress(root)
    assert events[0] == (runs[0].label, "skip")
    assert sorted(events[1:]) == sorted([(runs[1].label, "resume"), (runs[1].label, "done"),
                                         (runs[3].label, "start"), (runs[3].label, "done")])
    assert not (ckpt / "checkpoint").exists()  # a finished run's checkpoint goes (no --keep_checkpoints)


def test_a_run_taken_meanwhile_is_busy_and_a_killed_training_leaves_no_lock(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    progress = tmp_path / "progress.log"

    class Training:  # stands in for the training process; ``waits`` says what each wait() does
        waits: list = []

        def __init__(self, cmd, out, env):
            self.returncode, self.pid, self.killed = None, 0, False

        def wait(self, timeout=None):
            self.returncode = Training.waits.pop(0)()
            return self.returncode

        def poll(self):
            return self.returncode

        def kill(self):
            self.killed = True
            Training.last = self

    def taken():  # another process took the run: the trainer refuses (exit 2)
        (folder / ".lock").write_text(f"{os.getpid()} {jobs.socket.gethostname()}\n")
        return 2

    monkeypatch.setattr(jobs, "start_training", Training)
    Training.waits = [taken]
    assert jobs.TrainJob("rte/x/s1", str(folder), ["train"], str(progress))() == "busy"

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)

    def interrupted():  # Ctrl-C (or a cluster's time limit) while the training runs: it dies with its lock
        (folder / ".lock").write_text(f"{int(dead.stdout)} {jobs.socket.gethostname()}\n")
        raise KeyboardInterrupt

    (folder / ".lock").unlink()
    Training.waits = [interrupted, lambda: -9]
    with pytest.raises(KeyboardInterrupt):
        jobs.TrainJob("rte/x/s1", str(folder), ["train"], str(progress))()
    assert Training.last.killed and jobs._training is None  # the training does not outlive the job
    assert not (folder / ".lock").exists()
    assert [line.split("\t")[2] for line in progress.read_text().splitlines()] == ["start", "busy", "start",
                                                                                   "stopped"]


# ---- Slurm, without a cluster -------------------------------------------------------------------------------------

FAKE_SBATCH = r'''#!PYTHON
import pathlib, shutil, sys
box = pathlib.Path("BOX")
if (box / "refuse").exists():
    sys.exit("sbatch: error: invalid partition specified: " + (box / "refuse").read_text())
n = len(list(box.glob("sbatch_*.sh")))
shutil.copy(sys.argv[-1], box / f"sbatch_{n}.sh")
print(f"Submitted batch job {4242 + n}")
'''
FAKE_SQUEUE = r'''#!PYTHON
import pathlib
queue = pathlib.Path("BOX") / "queue.txt"
print(queue.read_text() if queue.exists() else "", end="")
'''


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """sbatch, srun and squeue on PATH; returns the folder where sbatch keeps what it was given."""
    box, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    box.mkdir()
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text.replace("PYTHON", sys.executable).replace("BOX", str(box)))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return box


SLURM_FLAGS = ["--cluster", "slurm", "--partition", "gpu", "--gpus_per_job", "1", "--cpus_per_job", "8",
               "--mem_gb", "64", "--time_min", "240", "--account", "acct", "--qos", "high"]


def test_slurm_submits_one_job_array_whose_tasks_train_and_resume(tmp_path, slurm, capsys):
    from submitit.core.utils import DelayedSubmission

    grid = _grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    assert campaign.main(["--grid", str(grid), "--root", str(root), *SLURM_FLAGS, "--jobs", "3"]) == 0
    out = capsys.readouterr().out
    assert "4 runs: 0 finished, 0 queued or running, 4 submitted now (Slurm job 4242; partition gpu, 1 GPU, " \
           "8 CPUs, 64 GB, 240 min each)" in out

    [script] = sorted(slurm.glob("sbatch_*.sh"))
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1", "#SBATCH --time=240", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=64GB", "#SBATCH --account=acct", "#SBATCH --qos=high", "#SBATCH --array=0-3%3",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=USR2@90",
                 f"#SBATCH --output={root}/.submitit/%A_%a_0_log.out", f"export PYTHONPATH={jobs.REPO}"):
        assert any(ln.startswith(line) for ln in text.splitlines()), line
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert srun.endswith(f"{sys.executable} -u -m submitit.core._submit {root}/.submitit")

    # each array task is one run's TrainJob: python -m mt_dnn.train <the run's flags> --output_dir RUN --resume
    runs = plan_runs(load_grid(grid), root)
    for i, run in enumerate(runs):
        pickled = root / ".submitit" / f"4242_{i}_submitted.pkl"
        job = DelayedSubmission.load(pickled).function
        assert isinstance(job, jobs.TrainJob) and job.label == run.label
        assert job.cmd == [sys.executable, "-m", "mt_dnn.train", *run.argv, "--output_dir", str(run.folder),
                           "--resume"]
        assert job.env["OMP_NUM_THREADS"] == "8"
        assert jobs.read_record(run.folder)["job_id"] == f"4242_{i}" and (run.folder / "flags.json").is_file()
    assert _progress(root) == [(r.label, f"submitted 4242_{i}") for i, r in enumerate(runs)]
    assert launch.train_command(runs[0], gpus_per_job=2)[1:6] == ["-m", "torch.distributed.run", "--standalone",
                                                                 "--nproc_per_node", "2"]

    # task 0 runs as Slurm would run it (the training replaced by the stand-in script, sleeping 0 s)
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN.replace("SLEEP", "0"))
    pickled = root / ".submitit" / "4242_0_submitted.pkl"
    delayed = DelayedSubmission.load(pickled)
    delayed.function.cmd = [sys.executable, str(fake), *delayed.function.cmd[3:]]
    delayed.dump(pickled)
    env = dict(os.environ, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="4250", SLURM_ARRAY_JOB_ID="4242",
               SLURM_ARRAY_TASK_ID="0", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NTASKS="1",
               SLURM_JOB_NUM_NODES="1", PYTHONPATH=str(jobs.REPO))
    subprocess.run([sys.executable, "-u", "-m", "submitit.core._submit", str(root / ".submitit")], env=env,
                   check=True, capture_output=True)
    assert is_finished(runs[0].folder) and _seen(runs[0].folder)["env"]["OMP_NUM_THREADS"] == "8"
    assert jobs.read_record(runs[0].folder)["host"] == jobs.socket.gethostname()
    assert _progress(root)[-2:] == [(runs[0].label, "start"), (runs[0].label, "done")]

    # submitting again: run 0 finished; run 1 still queued; run 2's job ended but left its lock on its node
    # (removed); run 3 is held by a training on a host that no job of ours names (left to it)
    (slurm / "queue.txt").write_text("4242_1\n4300\n")
    (runs[2].folder / ".lock").write_text("777 node17\n")
    jobs.write_record(runs[2].folder, executor="slurm", job_id="4242_2", host="node17")
    (runs[3].folder / ".lock").write_text("777 node18\n")
    capsys.readouterr()
    assert campaign.main(["--grid", str(grid), "--root", str(root), *SLURM_FLAGS]) == 0
    assert "4 runs: 1 finished, 2 queued or running, 1 submitted now (Slurm job 4243;" in capsys.readouterr().out
    second = (slurm / "sbatch_1.sh").read_text()
    assert "--array" not in second and "#SBATCH --partition=gpu" in second  # one run: a plain job
    assert DelayedSubmission.load(root / ".submitit" / "4243_submitted.pkl").function.folder == str(runs[2].folder)
    assert not (runs[2].folder / ".lock").exists() and (runs[3].folder / ".lock").exists()
    assert _progress(root)[-2:] == [(runs[0].label, "skip"), (runs[2].label, "submitted 4243")]


def test_a_requeued_slurm_task_takes_back_its_own_lock(tmp_path, monkeypatch, fake_train):
    """Killed without notice on node17, requeued on this node with the same job id: its lock is stale."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("777 node17\n")
    jobs.write_record(folder, executor="slurm", job_id="4242_1", host="node17")
    for key, value in dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="4251", SLURM_ARRAY_JOB_ID="4242",
                           SLURM_ARRAY_TASK_ID="3").items():
        monkeypatch.setenv(key, value)
    cmd = [sys.executable, str(fake_train), "--output_dir", str(folder), "--resume"]
    job = jobs.TrainJob("rte/x/s1", str(folder), cmd, str(tmp_path / "progress.log"))
    assert job() == "busy" and (folder / ".lock").exists()  # another task's lock: left alone
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    fake_train.write_text(FAKE_TRAIN.replace("SLEEP", "0"))
    assert job() == "done" and not (folder / ".lock").exists()
    assert jobs.read_record(folder)["job_id"] == "4242_1" and callable(job.checkpoint)  # requeued by submitit


def test_slurms_warning_makes_the_training_checkpoint_its_step_before_the_requeue(tmp_path, glue_dir,
                                                                                 tiny_model_dir):
    """submitit calls TrainJob.checkpoint on Slurm's SIGUSR2: a real mt_dnn.train run gets the signal, writes
    checkpoint/ at its current step and exits; the job says "stopped", and the requeued job resumes and finishes."""
    import threading

    import torch
    from submitit.helpers import DelayedSubmission

    folder = tmp_path / "run"
    cmd = [sys.executable, "-m", "mt_dnn.train", "--tasks", "rte", "--glue_dir", str(glue_dir), "--model",
           str(tiny_model_dir), "--cache_dir", str(tmp_path / "cache"), "--batch_size", "4", "--epochs", "2",
           "--lr", "1e-3", "--log_every", "1", "--output_dir", str(folder), "--resume"]
    job = jobs.TrainJob("rte/x/s1", str(folder), cmd, str(tmp_path / "progress.log"),
                        env={"MT_DNN_STEP_DELAY": "0.3", "MT_DNN_NO_TQDM": "1", "OMP_NUM_THREADS": "1"})
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(job()))
    worker.start()
    log = folder / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and "step 2/" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    delayed = job.checkpoint()  # what submitit's signal handler does before it requeues
    worker.join(timeout=120)
    assert result == ["stopped"] and isinstance(delayed, DelayedSubmission) and delayed.function is job
    step = torch.load(folder / "checkpoint" / "trainer_state.pt", weights_only=True)["step"]
    assert 2 <= step < 12 and not is_finished(folder)
    assert f"stopped by SIGUSR2 at step {step}/12" in (folder / "campaign.out").read_text()
    assert [ln.split("\t")[2] for ln in (tmp_path / "progress.log").read_text().splitlines()] == ["start", "stopped"]
    assert job() == "done" and is_finished(folder)  # the requeued job
    assert f"resumed from {folder / 'checkpoint'} at step {step}" in (folder / "train.log").read_text()


@pytest.mark.parametrize("flags,message", [
    (["--partition", "gpu"], "--partition is a Slurm setting: add --cluster slurm"),
    (["--gpus", "0,x"], "--gpus 0,x: expected distinct comma-separated GPU numbers"),
    (["--cluster", "slurm", "--gpus", "0"], "with --cluster slurm use --gpus_per_job"),
    (["--cluster", "slurm", "--time_min", "0"], "--time_min must be >= 1"),
])
def test_bad_launch_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    grid = _grid(tmp_path / "grid.yml")
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(tmp_path / "c"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "c").exists()


def test_slurm_errors_are_one_line_and_leave_no_run_folder(tmp_path, slurm, monkeypatch, capsys):
    grid = _grid(tmp_path / "grid.yml", seeds=[1])
    root = tmp_path / "camp"
    (slurm / "refuse").write_text("nope")
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(root), "--cluster", "slurm",
                                   "--partition", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: sbatch refused the campaign's jobs: sbatch: error: invalid partition specified: nope"
    assert not list(root.glob("rte/*/s*"))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no srun: not a Slurm machine
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(root), "--cluster", "slurm"]) == 2
    assert 'error: --cluster slurm: Could not detect "srun"' in capsys.readouterr().err


def test_gpus_come_from_the_flag_or_cuda_visible_devices(monkeypatch):
    assert launch.parse_gpus("0,2") == [0, 2] and launch.parse_gpus("none") == [] and launch.parse_gpus(None) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert launch.detect_gpus() == [2, 3]  # physical numbers: a run's CUDA_VISIBLE_DEVICES is one of them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.detect_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f1c")
    with pytest.raises(launch.ConfigError, match="pass --gpus 0,1"):
        launch.detect_gpus()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import torch

    assert launch.detect_gpus() == list(range(torch.cuda.device_count()))
