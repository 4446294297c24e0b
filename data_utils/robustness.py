"""Robustness sets: extra evaluation-only files scored beside a task's dev split (AdvGLUE for the GLUE tasks).

A task definition may list them under ``robustness``; each set is one JSON file holding, per key, a list of
examples (AdvGLUE's ``dev.json`` layout: ``{"rte": [{"idx": 0, "sentence1": ..., "sentence2": ..., "label": 0},
...], ...}``)::

    rte:
      robustness:
        advglue:
          file: dev.json                  # in the robustness folder (--robustness_dir)
          splits: {dev: rte}              # our dev split -> the key of its examples in the file
          text_a: sentence1
          text_b: sentence2
          label: label
          label_ids: {0: entailment, 1: not_entailment}   # the file's label ids -> our label names

The label ids are mapped by name, never by position in ``labels`` (MNLI's labels are listed in another order
than AdvGLUE numbers them). These sets are scored at every dev evaluation and logged beside the dev metrics;
they never choose an epoch, a hyperparameter or a method.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_utils.glue import DataError, Example
from data_utils.task_def import ConfigError, RobustnessSet, SplitDef, TaskDef
from data_utils.user_input import lone_surrogate

logger = logging.getLogger(__name__)

ENV = "ROBUSTNESS_DIR"
DEFAULT_FOLDER = "advglue"  # looked for beside the GLUE folder when neither the flag nor the variable is set


def robustness_dir(flag: str | None, glue_dir: str | Path | None) -> Path | None:
    """The folder of the robustness files: ``flag``, else ``$ROBUSTNESS_DIR``, else ``advglue`` beside the GLUE
    folder when that exists; None when none is given or found. A folder given (flag or variable) that does not
    exist is a :class:`ConfigError`: a typo would otherwise drop the robustness scores of a whole run."""
    given = [(f"--robustness_dir {flag}", flag)] if flag else \
        [(f"${ENV} {os.environ[ENV]}", os.environ[ENV])] if os.environ.get(ENV) else []
    for what, folder in given:
        if not Path(folder).is_dir():
            raise ConfigError(f"{what}: no such folder")
        return Path(folder)
    if glue_dir:
        beside = Path(glue_dir).resolve().parent / DEFAULT_FOLDER
        if beside.is_dir():
            return beside
    return None


@dataclass
class RobustSplit:
    """One robustness set's examples for one dev split of a task."""

    set_name: str
    dev_split: str
    path: Path
    examples: list[Example]


def _fail(path: Path, where: str, why: str) -> DataError:
    return DataError(f"{path}: {where}: {why}")


def read_set(path: Path, task: TaskDef, rset: RobustnessSet, dev_split: str) -> list[Example]:
    """The examples of ``rset`` for ``dev_split`` of ``task``, labels as class ids of ``task.labels``.

    A file that is not JSON, lacks the split's key, or holds an example without a text field, with a label id
    outside ``label_ids`` or a non-finite id is a :class:`DataError` naming the file, the key and the example.
    """
    key = rset.splits[dev_split]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    except OSError as exc:  # a folder under that name, no permission to read it
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or key not in data:
        raise _fail(path, f"key {key!r}", f"missing (the file has {', '.join(map(str, data)) if isinstance(data, dict) else 'no keys'})")
    rows = data[key]
    if not isinstance(rows, list) or not rows:
        raise _fail(path, f"key {key!r}", "expected a non-empty list of examples")
    label_of = {i: task.labels.index(name) for i, name in rset.label_ids.items()}
    out: list[Example] = []
    for n, row in enumerate(rows):
        where = f"{key}[{n}]"
        if not isinstance(row, dict):
            raise _fail(path, where, "expected an object")
        texts = []
        for col in (rset.text_a, rset.text_b):
            if col is None:
                texts.append(None)
                continue
            value = row.get(col)
            if not isinstance(value, str) or not value.strip():
                raise _fail(path, where, f"field {col!r} is missing or empty")
            if (broken := lone_surrogate(value)) is not None:  # cannot be tokenized
                raise _fail(path, where, f"field {col!r} holds {broken}")
            texts.append(value)
        label = row.get(rset.label)
        if isinstance(label, bool) or not isinstance(label, int) or label not in label_of:
            raise _fail(path, where, f"label {label!r} is not one of the ids {sorted(label_of)}")
        idx = row.get("idx", n)
        if isinstance(idx, float) and not math.isfinite(idx):
            raise _fail(path, where, f"idx {idx!r} is not a finite number")
        out.append(Example(text_a=texts[0], text_b=texts[1], label=label_of[label], index=str(idx), line=n + 1))
    return out


def load_sets(task: TaskDef, folder: Path | None, warned: set[str] | None = None) -> list[RobustSplit]:
    """Every robustness set of ``task`` for its dev splits, read from ``folder``.

    A set whose file is missing (or no folder at all) is skipped with one warning per file (``warned`` holds
    the files already warned about); a malformed file is a :class:`DataError`.
    """
    warned = set() if warned is None else warned
    found: list[RobustSplit] = []
    dev_names = {s.name for s in task.splits_of("dev")}
    for set_name, rset in task.robustness.items():
        path = (folder / rset.file) if folder is not None else None
        if path is None or not path.is_file():
            shown = str(path) if path is not None else f"{rset.file} (no --robustness_dir, ${ENV} or advglue folder)"
            if shown not in warned:
                warned.add(shown)
                logger.warning("robustness set %s: %s not found; its scores are skipped", set_name, shown)
            continue
        for dev_split in rset.splits:
            if dev_split in dev_names:
                found.append(RobustSplit(set_name, dev_split, path, read_set(path, task, rset, dev_split)))
    return found


def set_digests(tasks, folder: Path | None) -> dict[str, str]:
    """``{"rte/advglue": sha256 prefix}`` of each task's robustness files that exist in ``folder``: part of a
    run's data fingerprint, so ``--resume`` refuses a robustness file that changed (or appeared or went) since."""
    out: dict[str, str] = {}
    for task in tasks:
        for name, rset in task.robustness.items():
            path = folder / rset.file if folder is not None else None
            if path is not None and path.is_file():
                try:
                    out[f"{task.name}/{name}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
                except OSError as exc:
                    raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return out


def tokenize_set(tokenizer, task: TaskDef, rs: RobustSplit, max_len: int):
    """The set's examples as :class:`~data_utils.flat_rows.Features` (split name ``<set>:<dev split>``)."""
    from data_utils.features import tokenize_examples

    split = SplitDef(name=f"{rs.set_name}:{rs.dev_split}", kind="dev", file=str(rs.path))
    return tokenize_examples(tokenizer, task, split, rs.examples, max_len)


def parse_robustness(where: str, block: Any, labels: tuple[str, ...] | None, dev_splits: set[str],
                     input_kind: str) -> dict[str, RobustnessSet]:
    """Validate a task's ``robustness`` block (see the module docstring) into sets by name."""
    if not isinstance(block, dict) or not block:
        raise ConfigError(f"{where}: robustness must be a mapping of set names to sets")
    keys = ("file", "splits", "text_a", "text_b", "label", "label_ids")
    out: dict[str, RobustnessSet] = {}
    for name, s in block.items():
        w = f"{where}, robustness set {name!r}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConfigError(f"{w}: a set name is letters, digits, _ and - only")
        if not isinstance(s, dict):
            raise ConfigError(f"{w}: expected a mapping")
        unknown = sorted(set(s) - set(keys))
        missing = [k for k in keys if k not in s]
        if unknown or missing:
            raise ConfigError(f"{w}: " + "; ".join(x for x in (
                f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                f"missing key(s) {', '.join(missing)}" if missing else "") if x))
        if labels is None:
            raise ConfigError(f"{w}: robustness sets are for classification tasks")
        if not isinstance(s["splits"], dict) or not s["splits"]:
            raise ConfigError(f"{w}: splits maps dev split names to keys of the file")
        bad = sorted(str(k) for k in s["splits"] if k not in dev_splits)
        if bad:
            raise ConfigError(f"{w}: {', '.join(bad)} is not a dev split of the task ({', '.join(sorted(dev_splits))})")
        ids = s["label_ids"]
        if not isinstance(ids, dict) or not ids or not all(isinstance(k, int) and not isinstance(k, bool)
                                                          for k in ids):
            raise ConfigError(f"{w}: label_ids maps the file's integer label ids to label names")
        wrong = sorted(str(v) for v in ids.values() if str(v) not in labels)
        if wrong or len({str(v) for v in ids.values()}) != len(ids):
            raise ConfigError(f"{w}: label_ids must map to distinct labels of the task ({', '.join(labels)}); "
                              f"got {', '.join(map(str, ids.values()))}")
        if (input_kind == "pair") != bool(s["text_b"]):
            raise ConfigError(f"{w}: text_b is {'needed' if input_kind == 'pair' else 'null'} for a {input_kind} task")
        out[str(name)] = RobustnessSet(file=str(s["file"]), splits={str(k): str(v) for k, v in s["splits"].items()},
                                       text_a=str(s["text_a"]), text_b=str(s["text_b"]) if s["text_b"] else None,
                                       label=str(s["label"]), label_ids={k: str(v) for k, v in ids.items()})
    return out
