"""A campaign's runs as Slurm jobs, through submitit: one job array, one array task per run.

Each task calls :class:`experiments.rapt.jobs.TrainJob`, which runs ``python -m mt_dnn.train ... --resume`` for its
run folder. The campaign submits and returns; ``ROOT/progress.log`` fills as the tasks run, and the same command
run again later skips what has finished and submits only what is neither finished nor still queued or running
(``squeue``). A task stopped at its time limit or preempted is requeued by submitit (up to
``MAX_TIMEOUT_REQUEUES`` times for time limits) and resumes from the run's last checkpoint.
"""
from __future__ import annotations

import contextlib
import getpass
import io
import logging
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from data_utils.task_def import ConfigError
from experiments.rapt import jobs as jobs_mod

logger = logging.getLogger(__name__)

MAX_TIMEOUT_REQUEUES = 3


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

    def check(self) -> None:
        if self.gpus_per_job < 0:
            raise ConfigError("--gpus_per_job must be >= 0")
        if self.cpus_per_job < 1:
            raise ConfigError("--cpus_per_job must be >= 1")
        if self.mem_gb <= 0:
            raise ConfigError("--mem_gb must be > 0")
        if self.time_min < 1:
            raise ConfigError("--time_min must be >= 1")

    def describe(self) -> str:
        gpus = f"{self.gpus_per_job} GPU{'s' * (self.gpus_per_job != 1)}, " if self.gpus_per_job else "no GPU, "
        return (f"partition {self.partition or '(default)'}, {gpus}{self.cpus_per_job} CPUs, {self.mem_gb:g} GB, "
                f"{self.time_min} min each")


def job_env(opts: SlurmOptions) -> dict[str, str]:
    """A job's training gets the job's CPUs as its threads (torch would otherwise count the whole node's)."""
    threads = str(opts.cpus_per_job)
    return {"MT_DNN_NO_TQDM": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads}


def slurm_executor(root: Path, opts: SlurmOptions, name: str, parallelism: int | None) -> submitit.AutoExecutor:
    """The submitit executor for the campaign's jobs (its files in ROOT/.submitit: scripts, pickles, job logs).

    Needs Slurm's ``srun`` on PATH (a login node); anywhere else a one-line error.
    """
    try:
        executor = submitit.AutoExecutor(folder=root / ".submitit", cluster="slurm",
                                         slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES)
    except RuntimeError as exc:
        raise ConfigError(f"--cluster slurm: {exc} (submit from a machine with Slurm's commands)") from None
    # the job imports this repository (the pickled TrainJob), wherever it was started from
    setup = [f"export PYTHONPATH={shlex.quote(str(jobs_mod.REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    params = {"name": name, "timeout_min": opts.time_min, "cpus_per_task": opts.cpus_per_job,
              "mem_gb": opts.mem_gb, "nodes": 1, "tasks_per_node": 1, "slurm_partition": opts.partition,
              "slurm_account": opts.account, "slurm_qos": opts.qos, "slurm_setup": setup,
              "slurm_gres": f"gpu:{opts.gpus_per_job}" if opts.gpus_per_job else None,
              "slurm_array_parallelism": parallelism}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def active_jobs() -> set[str] | None:
    """Ids of this user's Slurm jobs that are pending or running (array tasks one by one: ``4242_7``); None when
    ``squeue`` cannot say."""
    try:
        out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", f"--user={getpass.getuser()}"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def queued_runs(folders: list[Path]) -> dict[Path, str]:
    """Run folders whose Slurm job (``job.json``) is still pending or running: folder -> job id.

    A run whose job has ended but left its trainer's lock behind (a job killed without notice) gets its lock
    removed: the lock names the host that job ran on, and no job of the campaign runs there any more.
    """
    records = {f: r for f in folders if (r := jobs_mod.read_record(f)).get("executor") == "slurm"}
    if not records:
        return {}
    active = active_jobs()
    if active is None:
        logger.warning("squeue did not answer: runs submitted before and still queued may be submitted again "
                       "(a second job of a run skips it once the first has finished)")
        return {}
    queued: dict[Path, str] = {}
    for folder, record in records.items():
        job_id = str(record.get("job_id"))
        if job_id in active:
            queued[folder] = job_id
            continue
        holder = jobs_mod.lock_holder(folder)
        if holder is not None and holder.host == record.get("host"):
            jobs_mod.remove_lock(folder, f"Slurm job {job_id}, which has ended")
    return queued


def submit(train_jobs: list[jobs_mod.TrainJob], root: Path, opts: SlurmOptions,
           parallelism: int | None) -> list[str]:
    """Submit the jobs as one array (a single job for one run); records each run's job id in its ``job.json``
    and a ``submitted <id>`` line in progress.log. Returns the job ids."""
    if not train_jobs:
        return []
    executor = slurm_executor(root, opts, f"campaign-{root.resolve().name}", parallelism)
    try:  # submitit prints sbatch's complaint too: it is in the one-line error instead
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            submitted = [executor.submit(job) for job in train_jobs]
    except (FailedJobError, FailedSubmissionError, OSError) as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise ConfigError(f"sbatch refused the campaign's jobs: {lines[-1] if lines else exc}") from None
    ids = []
    for job, train_job in zip(submitted, train_jobs):
        folder = Path(train_job.folder)
        if jobs_mod.read_record(folder).get("job_id") != job.job_id:  # the job may have started already
            jobs_mod.write_record(folder, executor="slurm", job_id=job.job_id, submitted=time.time())
        jobs_mod.log_progress(Path(train_job.progress), train_job.label, f"submitted {job.job_id}")
        ids.append(str(job.job_id))
    return ids
