"""Resumable checkpoints: atomic writes, damage checks with a fall-back to ``checkpoint.old``, per-rank RNG state."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_utils import atomic
from data_utils.task_def import ConfigError

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
NAMES = ("checkpoint", "checkpoint.old")  # newest first; ``.old`` exists only if a kill hit the swap
START_OVER = "--overwrite starts over"


class Damaged(Exception):
    """A checkpoint folder that cannot be used (a file missing, truncated or not what it should be)."""


@dataclass
class Loaded:
    path: Path
    weights: dict[str, torch.Tensor]
    state: dict


def reason(exc: BaseException) -> str:
    """The first line of an error, short enough for a one-line message (an OSError's text alone, since it says
    what happened: "No space left on device"; any other error with its type)."""
    lines = str(getattr(exc, "strerror", None) or exc).strip().splitlines()
    text = lines[0] if lines else ""
    if not isinstance(exc, OSError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:160]


# ---- RNG state of one process --------------------------------------------------------------------------------

def rng_state() -> dict:
    """This process's torch, CUDA, numpy and python RNG states, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_meta": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": torch.tensor(py_state[1], dtype=torch.int64), "python_gauss": py_state[2]}


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if st["cuda"]:
        torch.cuda.set_rng_state_all(st["cuda"])
    pos, has_gauss, cached = st["numpy_meta"]
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    random.setstate((3, tuple(int(x) for x in st["python"].tolist()), st["python_gauss"]))


def rank_state(state: dict, rank: int) -> dict:
    """What rank ``rank`` saved: its RNG states and running loss sums (older checkpoints kept rank 0's only)."""
    if "ranks" in state:
        return state["ranks"][rank]
    return {"rng": {"torch": state["rng_torch"], "cuda": state["rng_cuda"], "numpy": state["rng_numpy"],
                    "numpy_meta": state["rng_numpy_meta"], "python": state["rng_python"],
                    "python_gauss": state["rng_python_gauss"]},
            "loss_sum": state["loss_sum"], "reg_sum": state["reg_sum"], "smart_skipped": state["smart_skipped"]}


# ---- metrics.jsonl: the records a checkpoint was saved after -------------------------------------------------

def metrics_prefix(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256) of ``metrics.jsonl`` now; (0, sha of nothing) if there is none."""
    data = path.read_bytes() if path.exists() else b""
    return len(data), hashlib.sha256(data).hexdigest()


def check_metrics(path: Path, state: dict, ckpt: Path) -> None:
    """The file must still begin with the exact records ``ckpt`` was saved after, ending on a record boundary."""
    n = int(state.get("metrics_bytes", 0))
    if n == 0:
        return
    if not path.exists():
        raise ConfigError(f"--resume: {path} is missing, but {ckpt} was saved after {n} bytes of it ({START_OVER})")
    size = path.stat().st_size
    if size < n:
        raise ConfigError(f"--resume: {path} is shorter than the {n} bytes {ckpt} was saved after "
                          f"({size} bytes; {START_OVER})")
    with open(path, "rb") as f:
        head = f.read(n)
    if not head.endswith(b"\n"):
        raise ConfigError(f"--resume: {path}: byte {n}, where {ckpt} was saved, is not the end of a record "
                          f"({START_OVER})")
    digest = state.get("metrics_sha256")
    if digest is not None and hashlib.sha256(head).hexdigest() != digest:
        raise ConfigError(f"--resume: {path}: its first {n} bytes differ from the records {ckpt} was saved after "
                          f"({START_OVER})")


def truncate_metrics(path: Path, n: int) -> None:
    """Drop the records written after the checkpoint (``check_metrics`` has shown ``n`` is a record boundary)."""
    if path.exists():
        with open(path, "r+b") as f:
            f.truncate(n)


# ---- the checkpoint folder ------------------------------------------------------------------------------------

def write(out: Path, model: torch.nn.Module, state: dict) -> None:
    """Write ``out/checkpoint`` (``model``'s weights and the trainer ``state``) atomically: into a folder of this
    process's own, then swapped in by renames.

    Any OSError (a full disk, a lost mount) removes the half-written folder and becomes a one-line user error;
    the previous checkpoint stays as it was.
    """
    from safetensors.torch import save_file

    final = out / NAMES[0]
    tmp = out / f"checkpoint.tmp-{os.getpid()}"
    had = any((out / n).exists() for n in NAMES)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        torch.save(state, tmp / STATE)
        atomic.replace_dir(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "; the previous checkpoint is kept" if had else ""
        raise ConfigError(f"{final}: cannot save ({reason(exc)}){kept}") from None


def read(d: Path) -> Loaded:
    """Both files of ``d``, fully read and checked; raises Damaged with a one-line reason."""
    from safetensors.torch import load_file

    for name in (WEIGHTS, STATE):
        if not (d / name).is_file():
            raise Damaged(f"{d / name} is missing")
    try:
        weights = load_file(str(d / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise Damaged(f"{d / WEIGHTS} is damaged ({reason(exc)})") from None
    try:
        state = torch.load(d / STATE, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # torch's text for it is about its weights_only default, not this file
        raise Damaged(f"{d / STATE} is damaged (not a trainer state torch can read)") from None
    except Exception as exc:  # EOFError, RuntimeError from a truncated zip, ...
        raise Damaged(f"{d / STATE} is damaged ({reason(exc)})") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "scheduler", "sampler"} <= set(state):
        raise Damaged(f"{d / STATE} is damaged (not a trainer state)")
    return Loaded(d, weights, state)


def read_for_resume(d: Path) -> Loaded:
    """read(), with damage as a one-line user error."""
    try:
        return read(d)
    except Damaged as exc:
        raise ConfigError(f"--resume: {exc}") from None


def find(out: Path) -> Loaded | None:
    """The newest usable checkpoint of ``out``: ``checkpoint/``, else a complete ``checkpoint.old/`` (said in the
    log). None if there is neither; a one-line error if one is there but none can be used."""
    problems: list[str] = []
    for name in NAMES:
        d = out / name
        if not d.exists():
            continue
        try:
            loaded = read(d)
        except Damaged as exc:
            problems.append(str(exc))
            continue
        if problems:
            logger.warning("%s; resuming from %s instead", problems[0], name)
        elif name != NAMES[0]:
            logger.info("resuming from %s (a save was interrupted while swapping folders)", d)
        return loaded
    if problems:
        raise ConfigError(f"--resume: {problems[0]}; no complete checkpoint.old to fall back on ({START_OVER})")
    return None


# ---- a trainer's state ------------------------------------------------------------------------------------------

def trainer_state(tr, ranks: list[dict]) -> dict:
    """Everything of Trainer ``tr`` but the weights, as tensors and plain values (loadable with weights_only=True);
    ``ranks`` holds each rank's own RNG states and loss sums, in rank order. Rank 0 calls it."""
    nbytes, digest = metrics_prefix(tr.out / "metrics.jsonl")
    return {
        "run_id": tr.start.run_id, "recipe": tr.recipe,
        "step": tr.step, "best_score": tr.best_score, "train_seconds": tr.train_seconds,
        "train_cpu_seconds": tr.train_cpu_seconds,
        "loss_count": tr.loss_count, "skipped_steps": tr.skipped_steps,
        "evaluated_epoch": tr._evaluated_epoch, "metrics_bytes": nbytes, "metrics_sha256": digest,
        "sampler": tr.sampler.state_dict(),
        "optimizer": tr.optimizer.state_dict(), "scheduler": tr.scheduler.state_dict(),
        "scaler": tr.scaler.state_dict(), "world_size": tr.world_size, "ranks": ranks,
    }


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, keeping this optimizer's kernel choice (``fused``, ``foreach``): a
    checkpoint written with the fused CUDA kernel resumes on a CPU, and one from a CPU resumes fused on a GPU."""
    kernel = ("fused", "foreach")
    groups = [{**g, **{k: mine[k] for k in kernel if k in mine}}
              for g, mine in zip(saved["param_groups"], optimizer.state_dict()["param_groups"])]
    optimizer.load_state_dict({**saved, "param_groups": groups})


def restore(tr, loaded: Loaded) -> None:
    """Put a checkpoint back into Trainer ``tr`` (built by its setup()); its rank gets its own RNG and loss sums."""
    st = loaded.state
    try:
        tr.model.load_state_dict(loaded.weights)
    except RuntimeError as exc:
        raise ConfigError(f"--resume: {loaded.path}: the weights do not fit this model ({reason(exc)})") from None
    load_optimizer(tr.optimizer, st["optimizer"])
    tr.scheduler.load_state_dict(st["scheduler"])
    tr.scaler.load_state_dict(st["scaler"])
    tr.sampler.load_state_dict(st["sampler"])
    tr.step, tr.best_score, tr.train_seconds = st["step"], st["best_score"], st["train_seconds"]
    tr.train_cpu_seconds = st.get("train_cpu_seconds")  # absent from older checkpoints: unknown from here on
    tr.loss_count, tr.skipped_steps, tr._evaluated_epoch = st["loss_count"], st["skipped_steps"], st["evaluated_epoch"]
    tr._metrics_bytes = int(st["metrics_bytes"])
    mine = rank_state(st, tr.rank)
    tr.loss_sum, tr.reg_sum = mine["loss_sum"], mine["reg_sum"]
    if hasattr(tr.reg, "skipped"):
        tr.reg.skipped = mine["smart_skipped"]
    set_rng_state(mine["rng"])
