"""One run of a campaign as a job: ``python -m mt_dnn.train ... --output_dir RUN --resume`` in a process of its own.

A :class:`TrainJob` is called in a worker of this machine's pool or in a Slurm array task (submitit pickles it). It
skips a finished run, leaves a run whose lock a live training holds to it, and otherwise starts (or resumes) the
training, its output appended to ``<run>/campaign.out``; each event is a line of ``ROOT/progress.log``. On Linux
the training gets SIGTERM when the process that started it dies (``PR_SET_PDEATHSIG``): it writes its checkpoint
and exits instead of running on alone. :meth:`TrainJob.stop` sends SIGUSR2 for the same (``mt_dnn.stop``: exit
status 75); submitit calls :meth:`TrainJob.checkpoint` on Slurm's warning signal, then requeues the task.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from mt_dnn.run_folder import is_finished, lock_holder, run_files
from mt_dnn.stop import EXIT_STOPPED

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
STOP_WAIT_S = 60.0  # the training's time to write its checkpoint (submitit has Slurm warn 90 s before the kill)


def run_status(folder: Path) -> str:
    """``done`` (finished), ``busy`` (a live training holds its lock), ``resume`` (a training wrote something
    there) or ``run`` (nothing yet)."""
    if is_finished(folder):
        return "done"
    if lock_holder(folder) is not None:
        return "busy"
    return "resume" if run_files(folder) else "run"


def log_progress(path: Path, run: str, status: str, seconds: float = 0.0) -> None:
    """Append ``timestamp<TAB>run<TAB>status<TAB>seconds`` to ROOT/progress.log (one write: jobs share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{run}\t{status}\t{seconds:.1f}\n")


_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None  # looked up before any fork


def _die_with(parent: int) -> None:
    """In the training's process before it starts: SIGTERM to it when its parent dies."""
    _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def start_training(cmd: list[str], out, env: dict[str, str]) -> subprocess.Popen:
    """The training process, its stdout and stderr appended to ``out`` (tests replace this function)."""
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=functools.partial(_die_with, os.getpid()) if _PRCTL else None)


@dataclass
class TrainJob(submitit.helpers.Checkpointable):
    """One run as a job: ``cmd`` (mt_dnn.train with ``--resume``) for ``folder`` with ``env`` added to the
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
            return self._run(Path(self.folder))
        except Exception as exc:  # a bug or an unwritable disk: one failed run, not a broken campaign
            logger.exception("%s failed", self.label)
            log_progress(Path(self.progress), self.label, f"failed ({type(exc).__name__})")
            return f"failed ({type(exc).__name__}: {exc})"

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Ask the training (if one runs) to write its checkpoint and stop; wait up to ``wait_s`` seconds."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            logger.info("asking the training of %s (pid %d) to write its checkpoint and stop", self.label, proc.pid)
            proc.send_signal(signal.SIGUSR2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """submitit's hook on Slurm's warning signal, before it requeues this job: the training checkpoints."""
        self.stop()
        self._proc = None  # not pickled with the requeued job
        return super().checkpoint(*args, **kwargs)

    def _event(self, status: str, seconds: float = 0.0, note: str = "", level: int = logging.INFO) -> str:
        """One line in ROOT/progress.log and in the log."""
        log_progress(Path(self.progress), self.label, status, seconds)
        logger.log(level, "%s: %s%s", self.label, status, note)
        return status

    def _run(self, folder: Path) -> str:
        status = run_status(folder)
        if status in ("done", "busy"):
            return self._event("skip" if status == "done" else "busy", note=f" ({lock_holder(folder) or 'finished'})")
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        gpu = env.get("CUDA_VISIBLE_DEVICES")
        self._event("resume" if status == "resume" else "start", note=f" on GPU {gpu}" if gpu else "")
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(folder / "campaign.out", "a") as out:
            out.write(f"\n$ {f'CUDA_VISIBLE_DEVICES={gpu} ' if gpu is not None else ''}{shlex.join(self.cmd)}\n")
            out.flush()
            self._proc = start_training(self.cmd, out, env)
            try:
                rc = self._proc.wait()
            finally:
                self._proc = None
        seconds = time.time() - t0
        if rc == EXIT_STOPPED:  # a signal reached the training itself: it saved its checkpoint
            return self._event("stopped", seconds, " (checkpoint written; the next start resumes it)")
        if rc == 0 and is_finished(folder):
            if not self.keep_checkpoints:  # a finished run never resumes; its checkpoint is only disk
                for name in ("checkpoint", "checkpoint.old"):
                    shutil.rmtree(folder / name, ignore_errors=True)
            return self._event("done", seconds, f" ({seconds:.0f} s)")
        holder = lock_holder(folder)
        if holder is not None:  # another process took the run between our check and the trainer's
            return self._event("busy", seconds, f" (held by {holder})")
        tail = [ln.strip() for ln in (folder / "campaign.out").read_text().splitlines() if ln.strip()][-1:]
        self._event(f"failed rc={rc}", seconds, f": {''.join(tail)}  [see {folder / 'campaign.out'}]", logging.ERROR)
        return f"failed rc={rc}" + "".join(f": {t}" for t in tail)
