"""Running a campaign's runs: on this machine (N at a time, one GPU each), as a Slurm job array, or as commands.

:func:`run_campaign` skips finished runs and runs whose lock a live training holds, and hands each other run, as an
:class:`experiments.rapt.jobs.TrainJob`, to this machine's ``concurrent.futures`` pool of N workers (each runs one
training at a time on a GPU of its own: ``CUDA_VISIBLE_DEVICES``; more workers than GPUs share them round-robin),
or to Slurm as one submitit job array (``--jobs`` at once: ``slurm_array_parallelism``; a task stopped at its time
limit or preempted has its training checkpoint on Slurm's warning signal and is requeued; submitit's files go to
``ROOT/.submitit``). :func:`commands` gives the runs' command lines for any other scheduler (GNU parallel, ...).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import shlex
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from data_utils.task_def import ConfigError
from experiments.rapt.grid import Run
from experiments.rapt.jobs import REPO, TrainJob, log_progress, run_status
from mt_dnn.run_folder import lock_holder

logger = logging.getLogger(__name__)

@dataclass
class SlurmOptions:
    """What each run's job asks Slurm for."""

    partition: str | None = None  # None: the cluster's default partition
    gpus_per_job: int = 1  # as --gres=gpu:N; 0 = a CPU job; > 1 runs the training under torchrun (DDP)
    cpus_per_job: int = 8
    mem_gb: float = 64
    time_min: int = 240
    account: str | None = None
    qos: str | None = None

    def describe(self) -> str:
        gpus = f"{self.gpus_per_job} GPU{'s' * (self.gpus_per_job != 1)}, " if self.gpus_per_job else "no GPU, "
        return (f"partition {self.partition or '(default)'}, {gpus}{self.cpus_per_job} CPUs, {self.mem_gb:g} GB, "
                f"{self.time_min} min each")


@dataclass
class LaunchOptions:
    """How the runs are run: where, how many at a time, on which GPUs."""

    jobs: int | None = None  # at a time; None: one per GPU (1 on CPU); on Slurm the array's parallelism
    gpus: list[int] | None = None  # this machine's GPUs for the runs (None or []: none, CPU)
    keep_checkpoints: bool = False
    max_runs: int | None = None
    cluster: str = "local"  # or "slurm"
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


def train_command(run: Run, gpus_per_job: int = 1) -> list[str]:
    """``--resume`` always: no checkpoint = a fresh start, and it makes the trainer checkpoint at each epoch end.
    A run on several GPUs (a cluster job) runs under torchrun, one process per GPU."""
    tail = [*run.argv, "--output_dir", str(run.folder), "--resume"]
    if gpus_per_job > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(gpus_per_job), "-m", "mt_dnn.train", *tail]
    return [sys.executable, "-m", "mt_dnn.train", *tail]


def thread_env(threads: int | None) -> dict[str, str]:
    """What a run's training gets added to its environment: no progress bars, and ``threads`` threads (None:
    torch's own count)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS") if threads else ()
    return {"MT_DNN_NO_TQDM": "1", **{name: str(threads) for name in names}}


def local_env(jobs: int, on_gpus: bool) -> dict[str, str]:
    """Side by side, a share of the cores each (one thread each on CPU, or they fight over the cores)."""
    return thread_env(None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs) if on_gpus else 1)


def commands(runs: list[Run], max_runs: int | None = None) -> list[str]:
    """The shell command of every run that is neither finished nor held by a live training (its flags.json
    written), one line each: for GNU parallel, an sbatch array, or any other scheduler. ``max_runs``: the first
    that many of those."""
    todo = [run for run in runs if run_status(run.folder) in ("resume", "run")][:max_runs]
    for run in todo:
        run.write_flags()
    return [shlex.join(train_command(run)) for run in todo]


def run_campaign(runs: list[Run], root: Path, opts: LaunchOptions) -> int:
    """Skip finished runs, run or resume the rest (here, or submit them to Slurm); returns how many failed
    (a submission to Slurm fails as a whole: a one-line error)."""
    progress = root / "progress.log"
    root.mkdir(parents=True, exist_ok=True)
    status = {run.label: run_status(run.folder) for run in runs}
    for run in runs:
        if status[run.label] == "done":
            log_progress(progress, run.label, "skip")
        elif status[run.label] == "busy":
            logger.info("%s is being trained by %s; left to it", run.label, lock_holder(run.folder))
    todo = [run for run in runs if status[run.label] in ("resume", "run")][:opts.max_runs]
    finished, busy = sum(s == "done" for s in status.values()), sum(s == "busy" for s in status.values())
    gpus_per_job = opts.slurm.gpus_per_job if opts.cluster == "slurm" else 1
    env = thread_env(opts.slurm.cpus_per_job) if opts.cluster == "slurm" else {}
    train_jobs = [TrainJob(run.label, str(run.folder), train_command(run, gpus_per_job), str(progress), dict(env),
                           opts.keep_checkpoints) for run in todo]
    if opts.cluster == "slurm":
        ids = _submit(train_jobs, root, opts)
        for run, job_id in zip(todo, ids):  # after the submission: a refused one leaves no run folder behind
            run.write_flags()
            log_progress(progress, run.label, f"submitted {job_id}")
        print(f"{len(runs)} runs: {finished} finished, {busy} running, {len(ids)} submitted now"
              + (f" (Slurm job {ids[0].split('_')[0]}; {opts.slurm.describe()}); once it has ended, the same "
                 "command submits what is unfinished" if ids else ""))
        return 0
    gpus = opts.gpus or []
    workers = opts.jobs or max(len(gpus), 1)
    logger.info("%d runs: %d finished, %d running elsewhere, %d to run now (%d at a time%s)", len(runs), finished,
                busy, len(todo), workers, f" on GPUs {','.join(map(str, gpus))}" if gpus else "")
    results = _pool(todo, train_jobs, workers, gpus, local_env(workers, bool(gpus)))
    return sum(r.startswith("failed") for r in results)


def _pool(runs: list[Run], train_jobs: list[TrainJob], workers: int, gpus: list[int], env: dict) -> list[str]:
    """Run the jobs in plan order, ``workers`` at a time; each worker has a GPU of its own (round-robin when
    there are more workers than GPUs)."""
    free: queue.SimpleQueue[str] = queue.SimpleQueue()
    for slot in range(workers):
        free.put(str(gpus[slot % len(gpus)]) if gpus else "")  # "": no GPU
    mine = threading.local()

    def one(run: Run, job: TrainJob) -> str:
        job.env.update(env, CUDA_VISIBLE_DEVICES=mine.gpu)
        run.write_flags()
        return job()

    with ThreadPoolExecutor(workers, initializer=lambda: setattr(mine, "gpu", free.get())) as pool:
        futures = [pool.submit(one, run, job) for run, job in zip(runs, train_jobs)]
        try:
            return [f.result() for f in futures]
        except BaseException:  # Ctrl-C: runs not started stay so; running trainings checkpoint and stop
            for f in futures:
                f.cancel()
            for job in train_jobs:
                job.stop(wait_s=0)
            raise


def _submit(train_jobs: list[TrainJob], root: Path, opts: LaunchOptions) -> list[str]:
    """Submit the jobs as one submitit job array (a single job for one run); returns the job ids. Needs Slurm's
    commands on PATH (a login node); anywhere else, or when sbatch refuses, a one-line error."""
    if not train_jobs:
        return []
    try:
        executor = submitit.AutoExecutor(folder=root / ".submitit", cluster="slurm",
                                         slurm_max_num_timeout=3)  # requeues at the time limit
    except RuntimeError as exc:
        raise ConfigError(f"--cluster slurm: {exc} (submit from a machine with Slurm's commands)") from None
    s = opts.slurm
    params = {"name": f"campaign-{root.resolve().name}", "timeout_min": s.time_min, "cpus_per_task": s.cpus_per_job,
              "mem_gb": s.mem_gb, "nodes": 1, "tasks_per_node": 1, "slurm_partition": s.partition,
              "slurm_account": s.account, "slurm_qos": s.qos, "slurm_array_parallelism": opts.jobs,
              "slurm_gres": f"gpu:{s.gpus_per_job}" if s.gpus_per_job else None,
              # the job imports this repository (the pickled TrainJob), wherever it was started from
              "slurm_setup": [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    try:  # submitit prints sbatch's complaint too: it is in the one-line error instead
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            submitted = [executor.submit(job) for job in train_jobs]
    except (FailedJobError, FailedSubmissionError, OSError) as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise ConfigError(f"sbatch refused the campaign's jobs: {lines[-1] if lines else exc}") from None
    return [str(job.job_id) for job in submitted]
