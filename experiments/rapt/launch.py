"""Running a campaign's runs: ``mt_dnn.train`` subprocesses, per-run locks, and the progress log.

Self-contained: the rest of the campaign calls :func:`run_campaign` (and :func:`run_status` for the dry run);
another launcher (a cluster scheduler, say) can replace this module behind those two functions.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.rapt.grid import Run
from experiments.rapt.results import is_finished

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]

LOCK_NAME = "RUNNING"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def lock_holder(folder: Path) -> str | None:
    """Who is running this run now (``host:pid``), or None. A lock left by a dead process on this host is stale.

    A lock from another host cannot be checked and counts as held; delete ``<folder>/RUNNING`` by hand if that
    machine is gone.
    """
    try:
        holder = (folder / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return None
    return holder or "?"


def try_lock(folder: Path) -> bool:
    """Claim a run for this process (``<folder>/RUNNING`` = ``host:pid``, created atomically); False = taken.

    Lets several campaign processes share one ROOT (e.g. one per terminal, or ``--max_runs 1`` loops) without
    two of them training the same run. A stale lock (dead process, this host) is taken over.
    """
    folder.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if lock_holder(folder) is not None:
                return False
            logger.warning("%s: taking over a stale lock", folder)
            (folder / LOCK_NAME).unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        return True
    return False


def unlock(folder: Path) -> None:
    (folder / LOCK_NAME).unlink(missing_ok=True)


def run_status(folder: Path) -> str:
    """``done`` (finished), ``busy`` (another live process holds its lock), ``resume`` (started: something was
    written) or ``run`` (nothing yet)."""
    if is_finished(folder):
        return "done"
    if lock_holder(folder) is not None:
        return "busy"
    started = any((folder / n).exists() for n in ("checkpoint", "checkpoint.old", "metrics.jsonl", "config.json"))
    return "resume" if started else "run"


class Progress:
    """Appends ``timestamp<TAB>run<TAB>status<TAB>seconds`` lines to ROOT/progress.log (thread-safe)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, run: str, status: str, seconds: float = 0.0) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{run}\t{status}\t{seconds:.1f}\n"
        with self.lock, open(self.path, "a") as f:
            f.write(line)


def train_command(run: Run) -> list[str]:
    """``--resume`` always: no checkpoint = a fresh start, and it makes the trainer checkpoint at each epoch end."""
    return [sys.executable, "-m", "mt_dnn.train", *run.argv, "--output_dir", str(run.folder), "--resume"]


def run_env(jobs: int) -> dict[str, str]:
    """The subprocess environment: the repository importable, no progress bars, one thread each when jobs > 1."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["MT_DNN_NO_TQDM"] = "1"
    if jobs > 1:  # N runs side by side: one thread each, or they fight over the cores
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = "1"
    return env


def execute(run: Run, status: str, env: dict[str, str], progress: Progress, keep_checkpoints: bool) -> bool:
    """Run (or resume) one training in a subprocess; output goes to ``<folder>/campaign.out``. True = finished."""
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "flags.json").write_text(json.dumps(
        {"task": run.task, "method_name": run.name, "seed": run.seed, "hash": run.folder.name.split("-")[-1],
         "identity": run.identity, "flags": run.flags}, indent=2, default=str))
    cmd = train_command(run)
    progress.log(run.label, "resume" if status == "resume" else "start")
    logger.info("%s %s", "resuming" if status == "resume" else "starting", run.label)
    t0 = time.time()
    with open(run.folder / "campaign.out", "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.time() - t0
    if rc == 0 and is_finished(run.folder):
        progress.log(run.label, "done", seconds)
        logger.info("done %s (%.0f s)", run.label, seconds)
        if not keep_checkpoints:  # a finished run never resumes; its checkpoint is only disk
            for name in ("checkpoint", "checkpoint.old"):
                shutil.rmtree(run.folder / name, ignore_errors=True)
        return True
    tail = [ln for ln in (run.folder / "campaign.out").read_text().splitlines() if ln.strip()][-1:]
    progress.log(run.label, f"failed rc={rc}", seconds)
    logger.error("%s failed (rc %d): %s  [see %s]", run.label, rc, tail[0] if tail else "",
                 run.folder / "campaign.out")
    return False


def run_campaign(runs: list[Run], root: Path, jobs: int, keep_checkpoints: bool, max_runs: int | None) -> int:
    """Skip finished runs, run or resume the rest (``jobs`` at a time); returns how many failed."""
    progress = Progress(root / "progress.log")
    todo: list[tuple[Run, str]] = []
    finished = busy = 0
    try:
        for run in runs:
            status = run_status(run.folder)
            if status == "done":
                progress.log(run.label, "skip")
                finished += 1
            elif max_runs is not None and len(todo) >= max_runs:
                continue
            elif status == "busy" or not try_lock(run.folder):  # another campaign process is running it
                logger.info("%s is running in another process (%s); skipped", run.label, lock_holder(run.folder))
                busy += 1
            else:
                todo.append((run, status))
        logger.info("%d runs: %d finished, %d running elsewhere, %d to run now (%d at a time)", len(runs),
                    finished, busy, len(todo), jobs)
        env = run_env(jobs)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda rs: execute(rs[0], rs[1], env, progress, keep_checkpoints), todo))
    finally:
        for run, _ in todo:
            unlock(run.folder)
    return sum(not ok for ok in results)
