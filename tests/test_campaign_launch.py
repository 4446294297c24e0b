"""How a campaign runs its runs (experiments.rapt.launch, .jobs): this machine's pool with one GPU per run side by
side, Slurm job arrays through submitit, and commands for other schedulers, all without GPUs or a cluster.

A stand-in training script replaces ``python -m mt_dnn.train`` (``launch.train_command``): it records what its
process saw (CUDA_VISIBLE_DEVICES, threads, start and end times) and writes a finished metrics.jsonl. Slurm's
``sbatch`` and ``srun`` are stand-in scripts on PATH: sbatch keeps the script submitit wrote and
answers with a job id.
"""
from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.rapt import campaign, jobs, launch
from experiments.rapt.grid import load_grid, plan_runs
from mt_dnn.run_folder import is_finished
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
    (busy / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
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


def test_a_run_taken_meanwhile_is_busy(tmp_path, monkeypatch):
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
        (folder / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
        return 2

    monkeypatch.setattr(jobs, "start_training", Training)
    Training.waits = [taken]
    assert jobs.TrainJob("rte/x/s1", str(folder), ["train"], str(progress))() == "busy"

    assert [line.split("\t")[2] for line in progress.read_text().splitlines()] == ["start", "busy"]


def _one_method_grid(path: Path, seeds=(1, 2, 3)) -> Path:
    path.write_text(yaml.safe_dump({"tasks": ["rte"], "seeds": list(seeds), "flags": {"max_steps": 2},
                                    "methods": {"standard": {"method": "standard"}}}))
    return path


def test_a_three_run_grid_runs_two_at_a_time_through_the_local_pool(tmp_path, fake_train):
    """2 GPUs: 2 workers; the third run starts when the first one ends, on the GPU that run gave back."""
    grid = _one_method_grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--gpus", "0,1"]) == 0
    runs = plan_runs(load_grid(grid), root)
    first, second, third = (_seen(r.folder) for r in runs)
    assert all(is_finished(r.folder) for r in runs)
    assert first["start"] < second["end"] and second["start"] < first["end"]  # the first two side by side
    assert {first["env"]["CUDA_VISIBLE_DEVICES"], second["env"]["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
    # the third goes to whichever worker comes free first; its GPU's run has ended by then (never three at once,
    # never two on one GPU). Which of the two ends first is a race of milliseconds, so it is not asserted.
    gpu = third["env"]["CUDA_VISIBLE_DEVICES"]
    same = [s for s in (first, second) if s["env"]["CUDA_VISIBLE_DEVICES"] == gpu]
    assert len(same) == 1 and third["start"] >= same[0]["end"]
    starts = [label for label, status in _progress(root) if status == "start"]
    assert sorted(starts[:2]) == sorted(r.label for r in runs[:2]) and starts[2] == runs[2].label  # plan order


def test_print_commands_lists_the_unfinished_runs_for_another_scheduler(tmp_path, capsys):
    grid = _one_method_grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    done, busy, todo = plan_runs(load_grid(grid), root)
    for folder in (done.folder, busy.folder):
        folder.mkdir(parents=True)
    (done.folder / "metrics.jsonl").write_text(json.dumps({"split": "train", "steps": 2}) + "\n")
    (busy.folder / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    assert campaign.main(["--grid", str(grid), "--root", str(root), "--print_commands"]) == 0
    expected = [sys.executable, "-m", "mt_dnn.train", "--max_steps", "2", "--cache_dir", str(root / ".cache" /
                "features"), "--method", "standard", "--tasks", "rte", "--seed", "3", "--output_dir",
                str(todo.folder), "--resume"]
    lines = capsys.readouterr().out.splitlines()
    assert [sorted(shlex.split(ln)) for ln in lines] == [sorted(expected)]
    assert shlex.split(lines[0])[-3:] == expected[-3:]
    assert (todo.folder / "flags.json").is_file() and not (root / "progress.log").exists()


STOPPABLE_TRAIN = r'''
import os, signal, sys, time
out = sys.argv[sys.argv.index("--output_dir") + 1]
signal.signal(signal.SIGUSR2, lambda *_: (open(os.path.join(out, "stopped"), "w").close(), sys.exit(75)))
open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
time.sleep(60)
'''


def test_ctrl_c_stops_the_running_trainings_at_a_checkpoint_and_starts_no_more(tmp_path, monkeypatch):
    import threading

    script = tmp_path / "train.py"
    script.write_text(STOPPABLE_TRAIN)
    monkeypatch.setattr(launch, "train_command", lambda run, gpus_per_job=1: [
        sys.executable, str(script), "--output_dir", str(run.folder)])
    grid = _one_method_grid(tmp_path / "grid.yml")
    root = tmp_path / "camp"
    runs = plan_runs(load_grid(grid), root)

    def ctrl_c_once_two_run():
        deadline = time.time() + 30
        while time.time() < deadline and not all((r.folder / "pid").exists() for r in runs[:2]):
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    # Ctrl-C raises KeyboardInterrupt even where pytest inherited an ignored SIGINT (a shell's background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=ctrl_c_once_two_run, daemon=True).start()
    t0 = time.time()
    try:
        with pytest.raises(KeyboardInterrupt):
            campaign.main(["--grid", str(grid), "--root", str(root), "--gpus", "none", "--jobs", "2"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.time() - t0 < 30  # the trainings did not sleep on
    assert all((r.folder / "stopped").exists() for r in runs[:2]) and not runs[2].folder.exists()
    assert sorted(_progress(root)) == sorted((r.label, s) for r in runs[:2] for s in ("start", "stopped"))


DRIVER = r'''
import sys
from experiments.rapt import campaign, launch
launch.train_command = lambda run, gpus_per_job=1: [sys.executable, "-c", "import os, sys, time; "
    "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)", str(run.folder / "pid")]
campaign.main(sys.argv[1:])
'''


def _dead(process) -> bool:
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_training_dies_with_its_campaign(tmp_path):
    """kill -9 of the campaign: its training (a stand-in that would sleep a minute) is gone within seconds."""
    import psutil

    grid = _one_method_grid(tmp_path / "grid.yml", seeds=[1])
    root = tmp_path / "camp"
    [run] = plan_runs(load_grid(grid), root)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "--grid", str(grid), "--root", str(root), "--gpus",
                               "none"], env=dict(os.environ, PYTHONPATH=str(jobs.REPO)), stderr=subprocess.DEVNULL)
    pid_file, deadline, training = run.folder / "pid", time.time() + 60, None
    try:
        while time.time() < deadline and not (pid_file.exists() and pid_file.read_text()):
            time.sleep(0.05)
        assert pid_file.exists(), "the stand-in training never started"
        training = psutil.Process(int(pid_file.read_text()))
        driver.kill()
        driver.wait()
        _, alive = psutil.wait_procs([training], timeout=5)
        assert all(_dead(p) for p in alive)  # a zombie (killed, not yet reaped) counts as gone
    finally:
        driver.kill()
        if training is not None:
            try:
                training.kill()
            except psutil.NoSuchProcess:
                pass


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


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """sbatch and srun on PATH; returns the folder where sbatch keeps what it was given."""
    box, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    box.mkdir()
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n")):
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
    assert "4 runs: 0 finished, 0 running, 4 submitted now (Slurm job 4242; partition gpu, 1 GPU, " \
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
        assert (run.folder / "flags.json").is_file()
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
    assert _progress(root)[-2:] == [(runs[0].label, "start"), (runs[0].label, "done")]

    # submitting again: run 0 finished; run 3 is held by a training on another node (left to it); the others are
    # submitted again (a task whose run has finished by the time it starts skips it)
    (runs[3].folder / ".lock").write_text("777 node18 12.5 4253\n")
    capsys.readouterr()
    assert campaign.main(["--grid", str(grid), "--root", str(root), *SLURM_FLAGS]) == 0
    assert "4 runs: 1 finished, 1 running, 2 submitted now (Slurm job 4243;" in capsys.readouterr().out
    second = (slurm / "sbatch_1.sh").read_text()
    assert "#SBATCH --array=0-1%2" in second and "#SBATCH --partition=gpu" in second
    assert [DelayedSubmission.load(root / ".submitit" / f"4243_{i}_submitted.pkl").function.folder
            for i in (0, 1)] == [str(runs[1].folder), str(runs[2].folder)]
    assert _progress(root)[-3:] == [(runs[0].label, "skip"), (runs[1].label, "submitted 4243_0"),
                                    (runs[2].label, "submitted 4243_1")]


def test_a_requeued_slurm_task_takes_back_its_own_lock(tmp_path, monkeypatch, fake_train):
    """Killed without notice on node17, requeued on this node with the same job id: its lock is stale."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("777 node17 12.5 4251\n")
    monkeypatch.setenv("SLURM_JOB_ID", "4252")
    cmd = [sys.executable, str(fake_train), "--output_dir", str(folder), "--resume"]
    job = jobs.TrainJob("rte/x/s1", str(folder), cmd, str(tmp_path / "progress.log"))
    assert job() == "busy"  # another job's lock: left alone
    monkeypatch.setenv("SLURM_JOB_ID", "4251")
    fake_train.write_text(FAKE_TRAIN.replace("SLEEP", "0"))
    assert job() == "done" and callable(job.checkpoint)  # requeued by submitit


def test_slurms_warning_makes_the_training_checkpoint_its_step_before_the_requeue(tmp_path, glue_dir,
                                                                                 tiny_model_dir):
    """submitit calls TrainJob.checkpoint on Slurm's SIGUSR2: a real mt_dnn.train run gets the signal, writes
    checkpoint/ at its current step and exits; the job says "stopped", and the requeued job resumes and finishes."""
    import threading

    import torch
    from submitit.helpers import DelayedSubmission

    folder = tmp_path / "run"
    slow_train = [sys.executable, str(Path(__file__).with_name("faults.py")), "--step_delay", "0.3", "--"]
    cmd = [*slow_train, "--tasks", "rte", "--glue_dir", str(glue_dir), "--model",
           str(tiny_model_dir), "--cache_dir", str(tmp_path / "cache"), "--batch_size", "4", "--epochs", "2",
           "--lr", "1e-3", "--log_every", "1", "--output_dir", str(folder), "--resume"]
    job = jobs.TrainJob("rte/x/s1", str(folder), cmd, str(tmp_path / "progress.log"),
                        env={"MT_DNN_NO_TQDM": "1", "OMP_NUM_THREADS": "1"})
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
    assert campaign.parse_gpus("0,2") == [0, 2] and campaign.parse_gpus("none") == [] \
        and campaign.parse_gpus(None) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert campaign.detect_gpus() == [2, 3]  # physical numbers: a run's CUDA_VISIBLE_DEVICES is one of them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert campaign.detect_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f1c")
    with pytest.raises(campaign.ConfigError, match="pass --gpus 0,1"):
        campaign.detect_gpus()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import torch

    assert campaign.detect_gpus() == list(range(torch.cuda.device_count()))
