"""Finding and reading a saved model folder (``best/``), with every damaged file reported as one line.

A saved model folder holds ``model.safetensors`` (all weights), ``model.json`` (pooling, tasks, heads),
``tasks.yml`` (the task definitions) and ``encoder/`` (the encoder's config and tokenizer). The folder is
published by renames (``swap_in``): ``best/`` becomes ``best.old/`` and the new folder becomes ``best/``, so a
kill between the two renames leaves only ``best.old/``; readers then use it (with a warning).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_utils.task_def import ConfigError, TaskDef

logger = logging.getLogger(__name__)

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
    try:
        config = AutoConfig.from_pretrained(d / "encoder")
    except Exception as exc:  # transformers raises OSError, ValueError or JSON errors for a damaged config
        raise ConfigError(f"{d / 'encoder' / 'config.json'}: cannot read the encoder config "
                          f"({_first_line(exc)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(d / "encoder", use_fast=True)
    except Exception as exc:
        raise ConfigError(f"{d / 'encoder'}: cannot load the tokenizer ({_first_line(exc)})") from None
    if check_weights:
        _open_weights(d / "model.safetensors")
    return SavedModel(d, meta, tasks, config, tokenizer)


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
