"""Running a campaign's runs through submitit: on this machine (N at a time, one GPU each) or as Slurm jobs.

:func:`run_campaign` skips finished runs and runs that a training holds (the trainer's ``<run>/.lock``), and hands
each other run, as an :class:`experiments.rapt.jobs.TrainJob`, to a submitit executor:

- this machine, one run at a time on CPU: submitit's ``DebugExecutor`` (the job runs in this process, its
  training in a subprocess);
- this machine otherwise: ``LocalExecutor`` with N slots; on GPUs slot i is bound to GPU ``gpus[i % len(gpus)]``
  and submitit sets each job's ``CUDA_VISIBLE_DEVICES`` to its slot's GPU, so runs side by side never share one
  (more slots than GPUs share them round-robin);
- ``--cluster slurm``: one job array (:mod:`experiments.rapt.cluster`); the campaign submits and returns.

Submitit keeps its files (pickled jobs, job logs) in ``ROOT/.submitit``; a run's own output goes to
``<run>/campaign.out``. :func:`run_status` is the dry run's view of a run.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from data_utils.task_def import ConfigError
from experiments.rapt import cluster as slurm_jobs
from experiments.rapt.grid import Run
from experiments.rapt.jobs import TrainJob, lock_holder, log_progress, started
from experiments.rapt.results import is_finished

logger = logging.getLogger(__name__)

LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs are killed after their timeout; a run has none
POLL_SECONDS = 0.25


@dataclass
class LaunchOptions:
    """How the runs are run: where, how many at a time, on which GPUs."""

    jobs: int | None = None  # at a time; None: one per GPU (1 on CPU); on Slurm the array's parallelism
    gpus: list[int] | None = None  # this machine's GPUs for the runs; None: detect, []: none (CPU)
    keep_checkpoints: bool = False
    max_runs: int | None = None
    cluster: str = "local"  # or "slurm"
    slurm: slurm_jobs.SlurmOptions = field(default_factory=slurm_jobs.SlurmOptions)


def run_status(folder: Path) -> str:
    """``done`` (finished), ``busy`` (a live training holds its lock), ``resume`` (started: something was
    written) or ``run`` (nothing yet)."""
    if is_finished(folder):
        return "done"
    if lock_holder(folder) is not None:
        return "busy"
    return "resume" if started(folder) else "run"


def parse_gpus(value: str | None) -> list[int] | None:
    """``--gpus``: ``0,1,3`` -> [0, 1, 3]; ``none`` -> [] (CPU); None -> None (detect)."""
    if value is None:
        return None
    if value.strip().lower() in ("none", "cpu", ""):
        return []
    ids = [x.strip() for x in value.split(",") if x.strip()]
    if not all(x.isdigit() for x in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {value}: expected distinct comma-separated GPU numbers (0,1,...) or none")
    return [int(x) for x in ids]


def detect_gpus() -> list[int]:
    """This machine's GPUs for the runs: the numbers in CUDA_VISIBLE_DEVICES when it is set, else every GPU torch
    sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        if not all(x.isdigit() for x in ids):
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={visible}: the campaign gives each run a GPU by number; "
                              "pass --gpus 0,1,... (or --gpus none)")
        return [int(x) for x in ids]
    import torch

    return list(range(torch.cuda.device_count()))


def train_command(run: Run, gpus_per_job: int = 1) -> list[str]:
    """``--resume`` always: no checkpoint = a fresh start, and it makes the trainer checkpoint at each epoch end.
    A run on several GPUs (a cluster job) runs under torchrun, one process per GPU."""
    tail = [*run.argv, "--output_dir", str(run.folder), "--resume"]
    if gpus_per_job > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(gpus_per_job), "-m", "mt_dnn.train", *tail]
    return [sys.executable, "-m", "mt_dnn.train", *tail]


def local_env(jobs: int, on_gpus: bool) -> dict[str, str]:
    """What a local run's training gets added to its environment: no progress bars; side by side, a share of the
    cores each (one thread each on CPU, or they fight over the cores)."""
    env = {"MT_DNN_NO_TQDM": "1"}
    if jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // jobs) if on_gpus else 1)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = threads
    return env


def write_flags(run: Run) -> None:
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "flags.json").write_text(json.dumps(
        {"task": run.task, "method_name": run.name, "seed": run.seed, "hash": run.folder.name.split("-")[-1],
         "identity": run.identity, "flags": run.flags}, indent=2, default=str))


def run_campaign(runs: list[Run], root: Path, opts: LaunchOptions) -> int:
    """Skip finished runs, run or resume the rest (locally, or submit them to Slurm); returns how many failed
    (a submission to Slurm fails as a whole: a one-line error)."""
    gpus = [] if opts.cluster == "slurm" else opts.gpus if opts.gpus is not None else detect_gpus()
    progress = root / "progress.log"
    root.mkdir(parents=True, exist_ok=True)
    queued = slurm_jobs.queued_runs([r.folder for r in runs]) if opts.cluster == "slurm" else {}
    todo: list[Run] = []
    finished = busy = 0
    for run in runs:
        status = run_status(run.folder)
        if status == "done":
            log_progress(progress, run.label, "skip")
            finished += 1
        elif opts.max_runs is not None and len(todo) >= opts.max_runs:
            continue
        elif run.folder in queued:
            logger.info("%s is queued or running as Slurm job %s; left to it", run.label, queued[run.folder])
            busy += 1
        elif status == "busy":
            logger.info("%s is being trained by %s; left to it", run.label, lock_holder(run.folder))
            busy += 1
        else:
            todo.append(run)
    if opts.cluster == "slurm":
        return _submit_to_slurm(todo, root, opts, finished, busy, len(runs))
    return _run_here(todo, root, opts, gpus, finished, busy, len(runs))


def _submit_to_slurm(todo: list[Run], root: Path, opts: LaunchOptions, finished: int, busy: int, total: int) -> int:
    env = slurm_jobs.job_env(opts.slurm)
    train_jobs = [TrainJob(run.label, str(run.folder), train_command(run, opts.slurm.gpus_per_job),
                           str(root / "progress.log"), env, opts.keep_checkpoints) for run in todo]
    ids = slurm_jobs.submit(train_jobs, root, opts.slurm, opts.jobs)
    for run in todo:  # after the submission: a refused one leaves no run folder behind
        write_flags(run)
    array = ids[0].split("_")[0] if ids else ""
    print(f"{total} runs: {finished} finished, {busy} queued or running, {len(ids)} submitted now"
          + (f" (Slurm job {array}; {opts.slurm.describe()})" if ids else ""))
    if ids:
        print(f"progress: {root / 'progress.log'}; job logs: {root / '.submitit'}; run this command again "
              "later to submit what is unfinished and no longer queued")
    return 0


def _run_here(todo: list[Run], root: Path, opts: LaunchOptions, gpus: list[int], finished: int, busy: int,
              total: int) -> int:
    jobs = opts.jobs or max(len(gpus), 1)
    logger.info("%d runs: %d finished, %d running elsewhere, %d to run now (%d at a time%s)", total, finished, busy,
                len(todo), jobs, f" on GPUs {','.join(map(str, gpus))}" if gpus else "")
    if not todo:
        return 0
    folder = root / ".submitit"
    if jobs == 1 and not gpus:
        executor: submitit.Executor = submitit.DebugExecutor(folder)
    else:
        executor = submitit.LocalExecutor(folder)  # its jobs inherit this process's environment and folder
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    env = local_env(jobs, bool(gpus))
    train_jobs = [TrainJob(run.label, str(run.folder), train_command(run), str(root / "progress.log"), env,
                           opts.keep_checkpoints) for run in todo]
    quiet = _DebugNotice()
    logging.getLogger().addFilter(quiet)
    try:
        results = asyncio.run(_pool(executor, todo, train_jobs, jobs, gpus))
    finally:
        logging.getLogger().removeFilter(quiet)
    return sum(r.startswith("failed") for r in results)


class _DebugNotice(logging.Filter):
    """DebugExecutor warns at every job that it also logs to its files in ROOT/.submitit; once is in the docs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Logging is written both to stderr/stdout")


async def _pool(executor: submitit.Executor, runs: list[Run], train_jobs: list[TrainJob], slots: int,
                gpus: list[int]) -> list[str]:
    """Run the jobs, at most ``slots`` at a time, in plan order; a job takes a free slot (and its GPU)."""
    free: asyncio.Queue[int] = asyncio.Queue()
    for slot in range(slots):
        free.put_nowait(slot)
    submitted: list[submitit.Job] = []

    async def one(run: Run, train_job: TrainJob) -> str:
        slot = await free.get()
        try:
            if isinstance(executor, submitit.LocalExecutor):
                gpu = [gpus[slot % len(gpus)]] if gpus else []
                executor.update_parameters(gpus_per_node=len(gpu), visible_gpus=gpu)
            write_flags(run)
            job = executor.submit(train_job)
            submitted.append(job)
            here = isinstance(executor, submitit.DebugExecutor)  # in this process: the job logs to this console
            if not here:
                logger.info("%s: job %s%s", run.label, job.job_id, f" on GPU {gpus[slot % len(gpus)]}" if gpus else "")
            try:
                result = await job.awaitable().result(poll_interval=POLL_SECONDS)
                if not here:
                    logger.log(logging.ERROR if result.startswith("failed") else logging.INFO, "%s: %s%s", run.label,
                               result, f"  [see {run.folder / 'campaign.out'}]" if result.startswith("failed") else "")
                return result
            except Exception as exc:  # the job's process died (killed) before it could return
                log_progress(Path(train_job.progress), run.label, "failed (job)")
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                logger.error("%s: job %s ended without a result: %s", run.label, job.job_id,
                             lines[-1] if lines else exc)
                return "failed (job)"
        finally:
            free.put_nowait(slot)

    try:
        return list(await asyncio.gather(*(one(r, j) for r, j in zip(runs, train_jobs))))
    except BaseException:  # Ctrl-C: stop the runs this campaign started
        for job in submitted:
            if isinstance(job, submitit.LocalJob) and not job.done():
                job.cancel(check=False)
        raise
