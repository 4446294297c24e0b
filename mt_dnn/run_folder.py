"""One run per output folder: its lock, the guard against replacing another run, and the recipe --resume must match."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from data_utils.task_def import ConfigError, TaskDef

logger = logging.getLogger(__name__)

LOCK = ".lock"
# what a training writes into its folder (campaign files such as flags.json are not the trainer's)
RUN_FILES = ("config.json", "metrics.jsonl", "best", "best.old", "checkpoint", "checkpoint.old", "train.log")
TEMP_PATTERNS = ("checkpoint.tmp*", "best.tmp*")  # half-written folders of a killed process
# TrainConfig fields that cannot change what a run computes: where things are, how often it logs or saves,
# when it gives up, and how it was started. Every other field is part of the recipe. (task_def is replaced by
# the contents of the selected tasks' definitions; the device is the user's to change, and so is tf32, which
# only matters on CUDA: like moving a run to another device, it changes the last digits, not the recipe.)
NOT_RESULT = frozenset({"glue_dir", "output_dir", "cache_dir", "task_def", "eval_batch_size", "log_every", "device",
                        "tf32", "save_every_steps", "max_bad_steps", "resume", "overwrite"})
# how a config.json without a "recipe" block (written by older versions) can still be compared
LEGACY_SKIP = frozenset({"tasks", "model", "init_checkpoint"})


# ---- the recipe -------------------------------------------------------------------------------------------------

def recipe(cfg: Any, tasks: list[TaskDef], method_options: dict, resolved_model: str) -> dict[str, Any]:
    """Every result-changing setting of a run, as JSON values: TrainConfig minus NOT_RESULT, with the task names
    as selected, the method's full options, the model and --init_checkpoint as absolute paths where they are
    local, and the selected tasks' definitions (their contents, wherever the YAML came from)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in NOT_RESULT:
            continue
        value = getattr(cfg, f.name)
        if f.name == "tasks":
            value = [t.name for t in tasks]
        elif f.name == "method_options":
            value = method_options
        elif f.name == "model":
            value = str(Path(resolved_model).resolve()) if Path(resolved_model).exists() else resolved_model
        elif f.name == "init_checkpoint" and value:
            value = str(Path(value).resolve())
        out[f.name] = value
    out["task_defs"] = {t.name: t.to_dict() for t in tasks}
    return json.loads(json.dumps(out, default=str))


def recipe_of(config_json: dict) -> dict[str, Any]:
    """The recipe saved in a run's config.json (or what of it an older config.json allows to compare)."""
    if "recipe" in config_json:
        return config_json["recipe"]
    return {k: v for k, v in config_json.items()
            if k not in NOT_RESULT and k not in LEGACY_SKIP and not k.startswith("resolved_")}


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out or {prefix: {}}
    return {prefix: value}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def recipe_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["lr=0.0001, now lr=0.0002", ...]`` for every setting that differs (nested ones by dotted name); a
    top-level setting the old recipe does not have (older version) is not compared."""
    out = []
    for key in new:
        if key not in old:
            continue
        a, b = _flat(old[key], key), _flat(new[key], key)
        for sub in list(dict.fromkeys([*b, *a])):
            va, vb = a.get(sub, "<unset>"), b.get(sub, "<unset>")
            if va != vb:
                out.append(f"{sub}={_show(va)}, now {sub}={_show(vb)}")
    return out


def check_recipe(old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = recipe_diff(old, new)
    if diff:
        raise ConfigError(f"--resume: this run was made with {'; '.join(diff)} "
                          "(use another --output_dir, or --overwrite to start over)")


# ---- the folder -----------------------------------------------------------------------------------------------

def run_files(out: Path) -> list[str]:
    """The files and folders of a training run present in ``out`` (folders with a trailing slash)."""
    return [n + ("/" if (out / n).is_dir() else "") for n in RUN_FILES if (out / n).exists()]


def is_finished(out: Path) -> bool:
    """metrics.jsonl ends with the run's final ``"split": "train"`` record."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return False
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    try:
        return bool(lines) and json.loads(lines[-1]).get("split") == "train"
    except (json.JSONDecodeError, AttributeError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clear_run(out: Path, keep_log: bool = False) -> None:
    """Remove a previous run's files (checkpoint included) so that a fresh one starts clean."""
    for name in RUN_FILES:
        if (out / name).exists() and not (keep_log and name == "train.log"):
            _remove(out / name)
            logger.info("removed %s of the previous run", out / name)


def remove_leftovers(out: Path) -> None:
    """Half-written folders (``checkpoint.tmp-PID``, ``best.tmp-PID``) of a killed process; only called while this
    process holds the folder's lock, so no live writer owns them."""
    for pattern in TEMP_PATTERNS:
        for path in out.glob(pattern):
            _remove(path)
            logger.info("removed %s, left by a process that was stopped while saving", path)


# ---- the lock ---------------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> tuple[int | None, str]:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


class RunLock:
    """``<output_dir>/.lock`` holding ``PID HOST`` while a training runs there (taken by the main process only).

    A lock whose process is gone (same host) is stale and taken over with a warning; one from another host
    cannot be checked and counts as held. The same process may take its own lock again.
    """

    def __init__(self, out: Path):
        self.out = out
        self.path = out / LOCK
        self.held = False
        self.created_dir = False
        self.me = (os.getpid(), socket.gethostname())

    def acquire(self) -> None:
        self.created_dir = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host = _holder(self.path)
                if pid is None:  # being written this instant, or left empty by a crash: look once more
                    time.sleep(0.2)
                    pid, host = _holder(self.path)
                if pid is not None and (pid, host) != self.me and (host != self.me[1] or _alive(pid)):
                    raise ConfigError(f"{self.out} is in use by another training (pid {pid} on {host}); "
                                      "wait for it to end, or use another --output_dir")
                if (pid, host) != self.me:
                    logger.warning("%s: taking over the stale lock of pid %s (no such process)", self.out, pid)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.me[0]} {self.me[1]}\n")
            self.held = True
            return
        raise ConfigError(f"{self.path}: cannot take the lock (another process keeps taking it)")

    def release(self) -> None:
        """Drop the lock if it is still ours; remove the folder if acquire() made it and nothing was written."""
        if self.held and _holder(self.path) == self.me:
            self.path.unlink(missing_ok=True)
        self.held = False
        if self.created_dir:
            try:
                self.out.rmdir()  # only succeeds when empty
            except OSError:
                pass


# ---- what a start in this folder means -------------------------------------------------------------------------

@dataclasses.dataclass
class Start:
    """The decision about ``output_dir``, made before anything is written there."""

    checkpoint: str | None  # the checkpoint folder to resume from
    clear: bool  # remove the previous run's files first (--overwrite; --resume of a run without a checkpoint)
    keep_log: bool  # ... but append to its train.log (the same run, started again)
    run_id: str  # written to config.json and every checkpoint: a checkpoint of another run is refused


def _read_config(out: Path) -> dict:
    path = out / "config.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {path} is unreadable ({str(exc).splitlines()[0]}; --overwrite starts over)")
    return data if isinstance(data, dict) else {}


def plan_start(out: Path, new_recipe: dict, resume: bool, overwrite: bool):
    """Check ``out`` for a start and decide what to do: returns (Start, the checkpoint read, or None).

    Without --resume or --overwrite a folder holding another run is an error; --resume refuses a finished run,
    a changed recipe, a damaged checkpoint (unless checkpoint.old is complete), a checkpoint of another run, and
    a metrics.jsonl that no longer begins with the records the checkpoint was saved after. Reads only.
    """
    from mt_dnn import checkpoint

    present = run_files(out)
    new_id = uuid.uuid4().hex[:12]
    if not present:
        return Start(None, False, False, new_id), None
    if overwrite:
        return Start(None, True, False, new_id), None
    if not resume:
        raise ConfigError(f"{out} holds another run ({', '.join(present)}): pass --resume to continue it, "
                          "or --overwrite to replace it")
    if is_finished(out):
        raise ConfigError(f"--resume: {out} holds a finished run (metrics.jsonl ends with its train record); "
                          "nothing to resume (--overwrite trains it again)")
    saved_config = _read_config(out)
    if saved_config:
        check_recipe(recipe_of(saved_config), new_recipe)
    loaded = checkpoint.find(out)
    if loaded is None:
        logger.info("--resume: no checkpoint in %s, starting from scratch", out)
        return Start(None, True, True, new_id), None
    if loaded.state.get("recipe") is not None:
        check_recipe(loaded.state["recipe"], new_recipe)
    elif not saved_config:
        raise ConfigError(f"--resume: {loaded.path} does not say which run it belongs to and there is no "
                          f"config.json ({checkpoint.START_OVER})")
    ours, its = saved_config.get("run_id"), loaded.state.get("run_id")
    if ours is not None and its is not None and ours != its:
        raise ConfigError(f"--resume: {loaded.path} belongs to another run (run id {its}; config.json: {ours}; "
                          f"{checkpoint.START_OVER})")
    checkpoint.check_metrics(out / "metrics.jsonl", loaded.state, loaded.path)
    return Start(str(loaded.path), False, False, its or ours or new_id), loaded
