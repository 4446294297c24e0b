"""What a run is, and one run per output folder: the role of every setting, the recipe --resume must match, the
folder's lock, and the guard against replacing another run.

Every ``TrainConfig`` field has one role in :data:`ROLES`, and everything that asks whether two runs are the same
derives from it: the recipe ``--resume`` compares (:func:`recipe`), the flags a campaign hashes into a run
folder's name (``experiments.rapt.grid``) and the match a campaign asks of a run it adopts
(``experiments.rapt.adopt``).
"""
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
from typing import Any, NamedTuple

import psutil

from data_utils import atomic
from data_utils.task_def import ConfigError, TaskDef

logger = logging.getLogger(__name__)

LOCK = ".lock"
# what a training writes into its folder (campaign files such as flags.json are not the trainer's)
RUN_FILES = ("config.json", "metrics.jsonl", "best", "best.old", "checkpoint", "checkpoint.old", "train.log")
TEMP_PATTERNS = ("checkpoint.tmp*", "best.tmp*")  # half-written folders of a killed process
MARKER = ".mt_dnn_run"  # written first into every folder a training uses: the RUN_FILES there are ours
COMPANIONS = ("flags.json", "job.json", "campaign.out")  # a launcher's files beside a training, never touched here
RESULT = "result"  # changes what the run computes: compared by --resume, part of a campaign folder's name
PLACE = "place"  # where the run or its inputs are: never compared (what the inputs hold may be)
RUNTIME = "runtime"  # how the run is carried out (logging, saving, device, when to give up, how it was started)
# The role of every TrainConfig field. task_def is compared by what it selects: the recipe holds the selected tasks'
# definitions, wherever the YAML came from. Every method option changes the result (method_options). The device is
# the user's to change, and so are tf32, which only matters on CUDA, and compile: like moving a run to another
# device, they change the last digits, not the recipe. max_bad_steps only decides when a run gives up: a run that
# gave up may be resumed with a higher limit.
ROLES = {
    "tasks": RESULT, "method": RESULT, "method_options": RESULT, "glue_dir": PLACE, "output_dir": PLACE,
    "model": RESULT, "task_def": RESULT, "cache_dir": PLACE, "robustness_dir": PLACE, "bad_rows": RESULT,
    "max_seq_len": RESULT, "max_eval_samples": RESULT,  # a dev slice: other scores, maybe another best/
    "max_train_samples": RESULT, "pooling": RESULT, "epochs": RESULT, "max_steps": RESULT, "batch_size": RESULT,
    "lora_rank": RESULT, "lora_alpha": RESULT, "lora_dropout": RESULT, "lora_target_modules": RESULT,
    "eval_batch_size": RUNTIME, "lr": RESULT, "weight_decay": RESULT, "warmup": RESULT, "clip": RESULT,
    "optimizer": RESULT, "seed": RESULT, "no_eval": RESULT, "task_sampling": RESULT, "sampling_temperature": RESULT,
    "group_by_length": RESULT,
    "precision": RESULT, "grad_accumulation_steps": RESULT, "init_checkpoint": RESULT, "max_bad_steps": RUNTIME,
    "save_every_steps": RUNTIME, "resume": RUNTIME, "overwrite": RUNTIME, "log_every": RUNTIME, "device": RUNTIME,
    "tf32": RUNTIME, "compile": RUNTIME, "world_size": RESULT,
}
NOT_RESULT = frozenset(name for name, role in ROLES.items() if role != RESULT)
# how a config.json without a "recipe" block (written by older versions) can still be compared
LEGACY_SKIP = frozenset({"tasks", "model", "init_checkpoint"})


# ---- the recipe -------------------------------------------------------------------------------------------------

def recipe(cfg: Any, tasks: list[TaskDef], method_options: dict, resolved_model: str) -> dict[str, Any]:
    """Every result-changing setting of a run (role RESULT), as JSON values, with the task names
    as selected, the method's full options, the model and --init_checkpoint as absolute paths where they are
    local, and the selected tasks' definitions (their contents, wherever the YAML came from)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if ROLES[f.name] != RESULT or f.name == "task_def":  # task_def: task_defs below
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


# the files of a model folder that decide what it computes: config, tokenizer, pooling, weights (a saved run's
# model.json and tasks.yml too); READMEs and other exports (ONNX, OpenVINO) are not read by the trainer
_MODEL_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin", ".yml")
_MODEL_SUBFOLDERS = ("", "1_Pooling", "encoder")


def model_digest(folder: str | Path) -> str | None:
    """A sha256 prefix over the files a local encoder (or saved run) folder holds that the trainer reads: its
    config, tokenizer, pooling and weights, by relative path. None for a hub name (no local folder)."""
    import hashlib

    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for sub in _MODEL_SUBFOLDERS:
        d = folder / sub
        if not d.is_dir():
            continue
        for path in sorted(d.iterdir()):
            if path.is_file() and path.suffix in _MODEL_SUFFIXES and path.name != "README.md":
                h.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\0".encode())
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()[:16]


def recipe_model_files(cfg: Any) -> str | None:
    """The recipe's ``model_files``: :func:`model_digest` of the encoder folder, or of the run --init_checkpoint
    starts from, so that --resume and adoption refuse an encoder whose files changed under the same path."""
    from mt_dnn.model import find_model_dir, resolve_model

    if cfg.init_checkpoint:
        try:
            return model_digest(find_model_dir(cfg.init_checkpoint))
        except ConfigError:  # no trained model there: loading it says so
            return None
    return model_digest(resolve_model(cfg.model))


def recipe_data(cfg: Any, tasks: list[TaskDef]) -> dict[str, str]:
    """The recipe's ``data``: digests of every file the run reads (each task's train split and, when it
    evaluates, its dev splits and the robustness files scored beside them), so that --resume and adoption
    refuse a run made on other data."""
    from data_utils.features import data_fingerprint
    from data_utils.robustness import robustness_dir, set_digests

    data = data_fingerprint(cfg.glue_dir, tasks, with_dev=not cfg.no_eval)
    if not cfg.no_eval:  # the robustness files scored beside dev: a resumed run never mixes two versions
        data.update(set_digests(tasks, robustness_dir(cfg.robustness_dir, cfg.glue_dir)))
    return data


def recipe_of(config_json: dict) -> dict[str, Any]:
    """The recipe saved in a run's config.json (or what of it an older config.json allows to compare)."""
    if "recipe" in config_json:
        return config_json["recipe"]
    return {k: v for k, v in config_json.items()
            if ROLES.get(k) == RESULT and k != "task_def" and k not in LEGACY_SKIP}


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


def clear_run(out: Path, restart: bool = False) -> None:
    """Remove a previous run's files (checkpoint included) so that a fresh one starts clean. A ``restart`` (the
    same run started again from scratch) keeps its train.log, appended to, and its best/ until a new best
    replaces it."""
    kept = ("train.log", "best", "best.old") if restart else ()
    for name in RUN_FILES:
        if (out / name).exists() and name not in kept:
            _remove(out / name)
            logger.info("removed %s of the previous run", out / name)


def remove_leftovers(out: Path) -> None:
    """Half-written folders (``checkpoint.tmp-PID``, ``best.tmp-PID``) and files (``data_utils.atomic``'s
    temporary files of the run's own files) of a killed process; only called while this process holds the
    folder's lock, so no live writer owns them."""
    for pattern in TEMP_PATTERNS:
        for path in out.glob(pattern):
            _remove(path)
            logger.info("removed %s, left by a process that was stopped while saving", path)
    for name in (*RUN_FILES, MARKER):
        for path in atomic.remove_stale_temps(out / name, only_dead=False):
            logger.info("removed %s, left by a process that was stopped while saving", path)


def output_path(output_dir: str) -> Path:
    """``--output_dir`` as a path; an empty one is an error (it would mean the current folder)."""
    if not str(output_dir).strip():
        raise ConfigError("--output_dir is empty: name the run's folder")
    return Path(output_dir)


def _earlier_version_run(out: Path) -> bool:
    """A run folder made before folders were marked: its config.json has a training's shape (a ``recipe``, or
    an older version's settings), beside that training's records or checkpoint."""
    try:
        data = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    shaped = isinstance(data, dict) and (isinstance(data.get("recipe"), dict)
                                         or {"tasks", "method", "seed", "world_size"} <= set(data))
    return shaped and any((out / n).exists() for n in ("metrics.jsonl", "checkpoint", "checkpoint.old"))


def check_ours(out: Path) -> None:
    """Refuse a folder holding anything but a run of ours (its marker, or a run of an earlier version), the lock
    and a launcher's files: what is not ours is never written over or removed."""
    if not out.is_dir() or (out / MARKER).is_file() or _earlier_version_run(out):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (LOCK, *COMPANIONS))
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ConfigError(f"{out} holds files that are not a run of mt_dnn.train ({shown}; no {MARKER}): "
                          "use a new or empty --output_dir")


def mark(out: Path) -> None:
    """Make ``out`` a run folder of ours: the first file a training writes there (kept by --overwrite)."""
    if not (out / MARKER).is_file():
        atomic.write_text(out / MARKER, "a run folder of mt_dnn.train: its config.json, metrics.jsonl, best/, "
                                        "checkpoint/ and train.log are replaced by --overwrite\n")


# ---- the lock ---------------------------------------------------------------------------------------------------

class Holder(NamedTuple):
    """What a run folder's ``.lock`` says: ``PID HOST START JOB``, the training's process, its host, its process
    start time (seconds since the epoch; None in a lock of an older version) and its Slurm job (or None)."""

    pid: int
    host: str
    started: float | None = None
    job: str | None = None

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def read_lock(out: Path) -> Holder | None:
    """The lock of ``out`` as written, live or not; None when there is none (or it is being written)."""
    try:
        parts = (out / LOCK).read_text().split()
        pid, host = int(parts[0]), parts[1]
        started = float(parts[2]) if len(parts) > 2 and parts[2] != "-" else None
    except (OSError, IndexError, ValueError):
        return None
    return Holder(pid, host, started, parts[3] if len(parts) > 3 and parts[3] != "-" else None)


def why_stale(holder: Holder) -> str | None:
    """None while the training the lock names may still run; else why it cannot. On this host: the pid must be
    alive and (when the lock records it) have the training's start time, or the pid now belongs to another process.
    A lock from another host cannot be checked and counts as held, unless this process runs in the Slurm job that
    wrote it (requeued: Slurm runs a job once at a time)."""
    if holder.host != socket.gethostname():
        mine = holder.job is not None and holder.job == os.environ.get("SLURM_JOB_ID")
        return f"Slurm job {holder.job}, requeued" if mine else None
    try:
        started = psutil.Process(holder.pid).create_time()
    except psutil.NoSuchProcess:
        return "no such process"
    except psutil.Error:  # someone else's process that we may not inspect: alive
        return None
    # psutil derives start times from the boot time, which moves with the wall clock (a whole second when NTP
    # steps it): a live training must not look stale, and a reused pid starts long after its first owner did
    if holder.started is not None and abs(started - holder.started) > 2.0:
        return "that pid is another process now"
    return None


def lock_holder(out: Path) -> Holder | None:
    """The training that holds ``out`` now, or None (no lock, or a stale one)."""
    holder = read_lock(out)
    return holder if holder is not None and why_stale(holder) is None else None


class RunLock:
    """``<output_dir>/.lock`` (:class:`Holder`) while a training runs there (taken by the main process only).

    A stale lock (:func:`why_stale`) is taken over with a warning. The same process may take its own lock again.
    """

    def __init__(self, out: Path):
        self.out = out
        self.path = out / LOCK
        self.held = False
        self.created_dir = False
        self.me = Holder(os.getpid(), socket.gethostname(), psutil.Process().create_time(),
                         os.environ.get("SLURM_JOB_ID"))

    def acquire(self) -> None:
        self.created_dir = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.out)
                if holder is None:  # being written this instant, or left empty by a crash: look once more
                    time.sleep(0.2)
                    holder = read_lock(self.out)
                if holder is not None and holder[:2] != self.me[:2]:
                    why = why_stale(holder)
                    if why is None:
                        raise ConfigError(f"{self.out} is in use by another training ({holder}); wait for it to "
                                          "end, or use another --output_dir")
                    logger.warning("%s: taking over the stale lock of %s (%s)", self.out, holder, why)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.me.pid} {self.me.host} {self.me.started!r} {self.me.job or '-'}\n")
            self.held = True
            return
        raise ConfigError(f"{self.path}: cannot take the lock (another process keeps taking it)")

    def release(self) -> None:
        """Drop the lock if it is still ours; remove the folder if acquire() made it and nothing was written."""
        holder = read_lock(self.out)
        if self.held and holder is not None and holder[:2] == self.me[:2]:
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
    restart: bool  # ... but keep its train.log and best/ (the same run, started again from scratch)
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

    check_ours(out)
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
