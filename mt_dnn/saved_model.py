"""Finding and reading a saved model folder (``best/``), with every damaged file reported as one line.

A saved model folder holds ``model.safetensors`` (all weights), ``model.json`` (pooling, tasks, heads),
``tasks.yml`` (the task definitions) and ``encoder/`` (the encoder's config and tokenizer). The folder is
published by renames (``data_utils.atomic.replace_dir``): ``best/`` becomes ``best.old/`` and the new folder becomes
``best/``, so a kill between the two renames leaves only ``best.old/``; readers then use it (with a warning). A
reader that a training may race reads through :func:`read_whole`: the old model or the new one, whole.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from data_utils.encoder_limits import check_tokenizer
from data_utils.task_def import ConfigError, TaskDef

logger = logging.getLogger(__name__)
T = TypeVar("T")

REQUIRED_FILES = ("model.safetensors", "model.json", "tasks.yml", "encoder/config.json")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _missing_file(d: Path) -> Path | None:
    return next((d / f for f in REQUIRED_FILES if not (d / f).is_file()), None)


def find_model_dir(path: str | Path) -> Path:
    """A complete saved model folder: ``RUN_DIR/best`` for a run folder, or the folder itself.

    Where that folder is missing or incomplete and its ``.old`` twin is complete (a save was interrupted
    between its two renames), the ``.old`` one is used, with a warning.
    """
    d = Path(path)
    if (d / "best").exists() or (d / "best.old").exists():
        group = [d / "best", d / "best.old"]
    else:
        group = [d, d.with_name(d.name + ".old")]
    for candidate in group:
        if candidate.is_dir() and _missing_file(candidate) is None:
            if candidate != group[0]:
                logger.warning("%s is missing or incomplete (an interrupted save); using %s", group[0], candidate)
            return candidate
    for candidate in group:
        if candidate.is_dir() and any(candidate.iterdir()):
            raise ConfigError(f"{_missing_file(candidate)}: missing; {candidate} is not a complete saved model")
    raise ConfigError(f"{d}: no trained model here (expected {d / 'best' / 'model.safetensors'})")


@dataclass
class SavedModel:
    """What a saved model folder says, read and checked without loading the weights."""

    dir: Path
    meta: dict[str, Any]  # model.json
    tasks: list[TaskDef]  # the tasks it was trained on, in model.json's order
    config: Any  # the encoder's transformers config
    tokenizer: Any
    # every task definition as this model reads them: the packaged ones with its tasks.yml over them (a packaged
    # task predicted by one of its heads, AX by MNLI's, in that head's label order)
    definitions: dict[str, TaskDef]

    @property
    def heads(self) -> set[str]:
        return {t.name for t in self.tasks if t.head_name == t.name}


def read_model_dir(model_dir: str | Path, check_weights: bool = True) -> SavedModel:
    """Read ``model.json``, ``tasks.yml``, the encoder config and tokenizer; check the weights file's header.

    Every problem is a :class:`ConfigError` naming the file.
    """
    from transformers import AutoConfig, AutoTokenizer

    from data_utils.task_def import load_task_defs

    d = Path(model_dir)
    missing = _missing_file(d)
    if missing is not None:
        raise ConfigError(f"{missing}: missing; {d} is not a complete saved model")
    meta_path = d / "model.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{meta_path}: not a readable model description ({_first_line(exc)})") from None
    if (not isinstance(meta, dict) or not isinstance(meta.get("pooling"), str)
            or not isinstance(meta.get("tasks"), list) or not all(isinstance(t, str) for t in meta["tasks"])):
        raise ConfigError(f"{meta_path}: not a model description (needs 'pooling' and a list of 'tasks')")
    all_tasks = load_task_defs([d / "tasks.yml"])
    unknown = [n for n in meta["tasks"] if n not in all_tasks]
    if unknown:
        raise ConfigError(f"{d / 'tasks.yml'}: no definition of task(s) {', '.join(unknown)} listed in {meta_path}")
    tasks = [all_tasks[n] for n in meta["tasks"]]
    recorded = meta.get("labels")
    if isinstance(recorded, dict):  # the label vocabularies the heads were trained with (model.json) must be
        for t in tasks:           # the ones the task definitions give now: another order maps every id wrong
            if t.name in recorded and recorded[t.name] != (list(t.labels) if t.labels else None):
                raise ConfigError(f"{d / 'tasks.yml'}: task {t.name}'s labels {list(t.labels or ())} are not the "
                                  f"{recorded[t.name]} its head was trained with ({meta_path})")
    try:
        config = AutoConfig.from_pretrained(d / "encoder")
    except Exception as exc:  # transformers raises OSError, ValueError or JSON errors for a damaged config
        raise ConfigError(f"{d / 'encoder' / 'config.json'}: cannot read the encoder config "
                          f"({_first_line(exc)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(d / "encoder", use_fast=True)
    except Exception as exc:
        raise ConfigError(f"{d / 'encoder'}: cannot load the tokenizer ({_first_line(exc)})") from None
    check_tokenizer(tokenizer, config, str(d / "encoder"))
    if check_weights:
        _open_weights(d / "model.safetensors")
    return SavedModel(d, meta, tasks, config, tokenizer, all_tasks)


def _identity(d: Path) -> tuple[int, int] | None:
    try:
        st = d.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _current(path: Path) -> Path:
    """``path``; for an ``X.old`` that a finished swap removed, ``X``."""
    if path.name.endswith(".old") and not path.exists():
        return path.with_name(path.name[:-len(".old")])
    return path


def read_whole(path: str | Path, read: Callable[[Path], T]) -> T:
    """``read(folder)`` of the saved model at ``path`` (:func:`find_model_dir`), every file from one folder.

    A training replaces ``best/`` by renames (``data_utils.atomic.replace_dir``) while others may read it. A
    read during which the folder was replaced or removed is done again from the folder there now, so the reader
    gets the old model or the new one, whole; a training replaces its best at most once per evaluation.
    """
    for _ in range(3):
        d = find_model_dir(_current(Path(path)))
        before = _identity(d)
        try:
            result = read(d)
        except (ConfigError, OSError):
            if _identity(d) == before:
                raise
            continue
        if _identity(d) == before:
            return result
    raise ConfigError(f"{path}: the saved model was replaced every time it was read (a training is saving it); "
                      "try again")


def _open_weights(path: Path) -> None:
    """Read the safetensors header (cheap): a truncated or foreign file fails here."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError (or OSError)
        raise ConfigError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def load_weights(model_dir: str | Path) -> dict:
    """The state dict in ``model.safetensors``; a damaged file is a :class:`ConfigError` naming it."""
    from safetensors.torch import load_file

    path = Path(model_dir) / "model.safetensors"
    try:
        return load_file(str(path))
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


DEFAULT_MAX_LEN = 128  # a saved model folder that records no max_seq_len (see run_max_len)


def run_config(model_dir: Path) -> Path | None:
    """``RUN_DIR/config.json`` of a run's ``best/`` (or ``best.old/``) model folder, else None."""
    return model_dir.parent / "config.json" if model_dir.name in ("best", "best.old") else None


def _recorded_max_len(model_dir: Path) -> int | None:
    """The ``max_seq_len`` that ``model.json`` records (models saved by a training since it records it), else
    None; a damaged model.json is left to :func:`read_model_dir` to report."""
    try:
        value = json.loads((model_dir / "model.json").read_text(encoding="utf-8")).get("max_seq_len")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def run_max_len(model_dir: Path, flag: int | None = None) -> int:
    """``flag`` (``--max_seq_len``) when given, else the length the model was trained with: the one ``model.json``
    records, else its run's (``RUN_DIR/config.json`` next to ``best/``); a folder that records it nowhere (a copied
    ``best/`` of an earlier version) gets :data:`DEFAULT_MAX_LEN` with a warning. A damaged or incomplete
    config.json is a ConfigError."""
    if flag is not None:
        return flag
    recorded = _recorded_max_len(model_dir)
    if recorded is not None:
        return recorded
    cfg = run_config(model_dir)
    if cfg is None or not cfg.is_file():
        logger.warning("%s: the max_seq_len it was trained with is recorded neither in its model.json nor in a run "
                       "config.json beside it; using %d: pass --max_seq_len if it was trained with another",
                       model_dir, DEFAULT_MAX_LEN)
        return DEFAULT_MAX_LEN
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{cfg}: not a readable run config ({_first_line(exc)}); give --max_seq_len") from None
    value = data.get("max_seq_len") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{cfg}: no integer max_seq_len; give --max_seq_len")
    return value


def files_read(model_dir: Path) -> list[tuple[str, Path]]:
    """``(what, path)`` of every file a prediction with ``model_dir`` reads: the folder's files, the run's
    config.json and the packaged task definitions (an output file must be none of them)."""
    from data_utils.task_def import builtin_task_file

    files = [("a file of the model", f) for f in sorted(model_dir.rglob("*")) if f.is_file()]
    cfg = run_config(model_dir)
    if cfg is not None:
        files.append(("the run config", cfg))
    return files + [("the task definitions", Path(builtin_task_file()))]
