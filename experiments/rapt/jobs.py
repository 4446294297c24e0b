"""One run of a campaign as a submitit job: the part that runs where the run trains (this machine or a cluster node).

A :class:`TrainJob` is pickled by submitit and called in the job's process. It skips a finished run, leaves a run
that another training holds (the trainer's own ``<run>/.lock``) to it, and otherwise runs
``python -m mt_dnn.train ... --output_dir <run> --resume`` (a fresh start when there is no checkpoint), its output
appended to ``<run>/campaign.out``. Every event is a line of ``ROOT/progress.log``, written by the job itself, so a
cluster job logs there too. ``<run>/job.json`` says which submitit job trains the run (executor, job id, host).

A job stopped on a cluster (time limit, preemption) is requeued by submitit (:class:`TrainJob` is
``Checkpointable``) and resumes from the run's last checkpoint. On Slurm's warning signal, before it kills the job,
:meth:`TrainJob.checkpoint` passes SIGUSR2 on to the training, which ends its step, writes ``checkpoint/`` and
exits (``mt_dnn.stop``); so the requeued job continues from that step, not from the last epoch's end.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import submitit

from experiments.rapt.results import is_finished
from mt_dnn.run_folder import LOCK
from mt_dnn.stop import EXIT_STOPPED

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
JOB_RECORD = "job.json"
STARTED_FILES = ("checkpoint", "checkpoint.old", "metrics.jsonl", "config.json")
# Seconds the training gets to end its step and write its checkpoint after the warning signal. submitit asks
# Slurm for the signal 90 s before the kill; the rest is for requeueing.
STOP_WAIT_S = 60.0
_training: subprocess.Popen | None = None  # the training this job process runs now (one at a time)


class Holder(NamedTuple):
    """The training that holds a run folder's lock."""

    pid: int
    host: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_lock(folder: Path) -> Holder | None:
    """What ``<folder>/.lock`` says (``PID HOST``, as mt_dnn.train writes it), live or not; None if absent."""
    try:
        parts = (folder / LOCK).read_text().split()
    except OSError:
        return None
    if len(parts) != 2 or not parts[0].isdigit():
        return None
    return Holder(int(parts[0]), parts[1])


def lock_holder(folder: Path) -> Holder | None:
    """The training now holding the run (its lock), or None. A lock of a dead process on this host is stale
    (the trainer takes it over); one from another host cannot be checked here and counts as held."""
    holder = read_lock(folder)
    if holder is None or (holder.host == socket.gethostname() and not _alive(holder.pid)):
        return None
    return holder


def remove_lock(folder: Path, why: str) -> None:
    holder = read_lock(folder)
    (folder / LOCK).unlink(missing_ok=True)
    logger.warning("%s: removed the lock of %s (%s)", folder, holder, why)


def started(folder: Path) -> bool:
    """Something of a training is there (a checkpoint, records or its config): a start continues it."""
    return any((folder / name).exists() for name in STARTED_FILES)


def log_progress(path: Path, run: str, status: str, seconds: float = 0.0) -> None:
    """Append ``timestamp<TAB>run<TAB>status<TAB>seconds`` to ROOT/progress.log (one write: jobs share the file)."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{run}\t{status}\t{seconds:.1f}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_record(folder: Path) -> dict:
    """``<folder>/job.json``: the submitit job that was given the run (``executor``, ``job_id``, ``host`` once
    it started), or {}."""
    try:
        data = json.loads((folder / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{JOB_RECORD}.{os.getpid()}"
    tmp.write_text(json.dumps(fields, indent=2) + "\n")
    os.replace(tmp, folder / JOB_RECORD)


def current_job() -> tuple[str, str] | None:
    """(executor, job id) of the submitit job this process runs in (``slurm``, ``local``, ``debug``), or None."""
    if not (os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SUBMITIT_DEBUG_JOB_ID")):
        return None
    try:
        env = submitit.JobEnvironment()
        return env.cluster, str(env.job_id)
    except Exception:  # not inside a job after all
        return None


def clear_lock_of_requeued_job(folder: Path, job: tuple[str, str] | None) -> None:
    """A Slurm job killed without notice (node failure) leaves its trainer's lock behind, from a host this node
    cannot check. When the lock was written on the host ``job.json`` records for this very job id, the holder is
    this job before it was requeued, and Slurm runs a job id once at a time: the lock is stale."""
    if job is None or job[0] != "slurm":
        return
    holder, record = lock_holder(folder), read_record(folder)
    if holder is not None and record.get("job_id") == job[1] and record.get("host") == holder.host:
        remove_lock(folder, f"Slurm job {job[1]} before it was requeued")


@dataclass
class TrainJob(submitit.helpers.Checkpointable):
    """One run as a job: ``cmd`` (mt_dnn.train with ``--resume``) in ``folder`` with ``env`` added to the
    environment. Returns ``done``, ``skip`` (finished before it began), ``busy`` (another training holds the run),
    ``stopped`` (a signal stopped the training after it wrote its checkpoint) or ``failed rc=N: <the output's last
    line>``; never raises for a failed training."""

    label: str
    folder: str
    cmd: list[str]
    progress: str
    env: dict[str, str] = field(default_factory=dict)
    keep_checkpoints: bool = False

    def __call__(self) -> str:
        try:
            return self._run()
        except Exception as exc:  # a bug or an unwritable disk: one failed run, not a broken campaign
            log_progress(Path(self.progress), self.label, f"failed ({type(exc).__name__})")
            logger.exception("%s failed", self.label)
            return f"failed ({type(exc).__name__}: {exc})"

    def _train(self, out, env: dict[str, str], folder: Path, progress: Path, t0: float) -> int:
        """Run the training to its end; the process is kept where :meth:`checkpoint` finds it."""
        global _training
        proc = start_training(self.cmd, out, env)
        _training = proc
        try:
            return proc.wait()
        except BaseException:  # stopped (Ctrl-C; a cluster's time limit or preemption, then requeued)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if read_lock(folder) is not None and lock_holder(folder) is None:
                remove_lock(folder, "its training was stopped with this job")
            log_progress(progress, self.label, "stopped", time.time() - t0)
            raise
        finally:
            _training = None

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on Slurm's warning signal (time limit or preemption), before it requeues this job:
        the training gets SIGUSR2 and up to :data:`STOP_WAIT_S` seconds to end its step and write its checkpoint."""
        stop_training(STOP_WAIT_S)
        return super().checkpoint(*args, **kwargs)

    def _run(self) -> str:
        folder, progress = Path(self.folder), Path(self.progress)
        if is_finished(folder):
            log_progress(progress, self.label, "skip")
            return "skip"
        job = current_job()
        clear_lock_of_requeued_job(folder, job)
        holder = lock_holder(folder)
        if holder is not None:
            log_progress(progress, self.label, "busy")
            logger.info("%s is being trained by %s; left to it", self.label, holder)
            return "busy"
        status = "resume" if started(folder) else "start"
        folder.mkdir(parents=True, exist_ok=True)
        if job is not None:
            write_record(folder, executor=job[0], job_id=job[1], host=socket.gethostname(), started=time.time())
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        device = env.get("CUDA_VISIBLE_DEVICES")
        shown = (f"CUDA_VISIBLE_DEVICES={device} " if device is not None else "") + shlex.join(self.cmd)
        log_progress(progress, self.label, status)
        logger.info("%s %s%s", "resuming" if status == "resume" else "starting", self.label,
                    f" on GPU {device}" if device else "")
        t0 = time.time()
        with open(folder / "campaign.out", "a") as out:
            out.write(f"\n$ {shown}\n")
            out.flush()
            rc = self._train(out, env, folder, progress, t0)
        seconds = time.time() - t0
        if rc == EXIT_STOPPED:  # a signal reached the training itself: it saved its checkpoint
            log_progress(progress, self.label, "stopped", seconds)
            logger.info("%s stopped by a signal after writing its checkpoint; the next start resumes it", self.label)
            return "stopped"
        if rc == 0 and is_finished(folder):
            log_progress(progress, self.label, "done", seconds)
            logger.info("done %s (%.0f s)", self.label, seconds)
            if not self.keep_checkpoints:  # a finished run never resumes; its checkpoint is only disk
                for name in ("checkpoint", "checkpoint.old"):
                    shutil.rmtree(folder / name, ignore_errors=True)
            return "done"
        holder = lock_holder(folder)
        if holder is not None:  # another process took the run between our check and the trainer's
            log_progress(progress, self.label, "busy", seconds)
            logger.info("%s is being trained by %s; left to it", self.label, holder)
            return "busy"
        tail = [ln for ln in (folder / "campaign.out").read_text().splitlines() if ln.strip()][-1:]
        log_progress(progress, self.label, f"failed rc={rc}", seconds)
        logger.error("%s failed (rc %d): %s  [see %s]", self.label, rc, tail[0] if tail else "",
                     folder / "campaign.out")
        return f"failed rc={rc}" + (f": {tail[0].strip()}" if tail else "")


def start_training(cmd: list[str], out, env: dict[str, str]) -> subprocess.Popen:
    """The training process, its stdout and stderr appended to ``out`` (tests replace this function)."""
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop_training(wait_s: float) -> int | None:
    """Ask the training this process runs (if any) to checkpoint and stop (SIGUSR2); wait up to ``wait_s``
    seconds for it. Its exit status, or None when there was none or it is still running."""
    proc = _training
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    logger.info("asking the training (pid %d) to write its checkpoint and stop", proc.pid)
    proc.send_signal(signal.SIGUSR2)
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        logger.warning("the training (pid %d) did not stop within %.0f s; it is left to the scheduler", proc.pid,
                       wait_s)
        return None
