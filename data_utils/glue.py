"""Readers of the official GLUE files, exactly as distributed.

Files are tab-separated with no quoting (GLUE's own loaders use ``csv.QUOTE_NONE``), UTF-8, a header line
except CoLA's train/dev, and MRPC's header starts with a byte-order mark. Every problem stops with a
:class:`DataError` whose message is one line: ``path:line: what is wrong (the value)``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from data_utils.task_def import SplitDef, TaskDef

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data: reported to the user as one line naming the file and line."""


@dataclass(frozen=True)
class Example:
    """One row. ``label`` is the class id (classification), the score (regression) or None (test)."""

    text_a: str
    text_b: str | None
    label: int | float | None
    index: str  # the row's id column (test index); the 0-based row number where a file has no id column
    line: int  # 1-based line number in the file


def split_path(glue_dir: str | Path, task: TaskDef, split: SplitDef) -> Path:
    return Path(glue_dir) / task.data_dir / split.file


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # strips MRPC's byte-order mark
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.start + 4]
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({bad!r})") from None


def read_split(glue_dir: str | Path, task: TaskDef, split: SplitDef) -> list[Example]:
    """Read one split of a task. Labels are required on train/dev splits and ignored on test splits."""
    path = split_path(glue_dir, task, split)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (task {task.name}, split {split.name})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    text = _decode(path, raw)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise DataError(f"{path}: file is empty")
    if split.header:
        columns = lines[0].split("\t")
        first_data_line = 2
        body = lines[1:]
    else:
        columns = list(split.columns or ())
        first_data_line = 1
        body = lines
    needed = [task.text_a] + ([task.text_b] if task.text_b else [])
    needed += [task.index] if split.kind == "test" else [task.label]
    if split.kind == "test" and task.index not in columns:
        needed.remove(task.index)  # a test file without an id column is numbered by row
    missing = [c for c in needed if c not in columns]
    if missing:
        if split.header:
            raise DataError(f"{path}:1: wrong header: no column {', '.join(map(repr, missing))} "
                            f"({lines[0][:200]!r})")
        raise DataError(f"{path}: task {task.name}'s columns lack {', '.join(map(repr, missing))}")
    col = {name: i for i, name in enumerate(columns)}
    label_ids = {lab: i for i, lab in enumerate(task.labels)} if task.labels else None
    examples: list[Example] = []
    for offset, line_text in enumerate(body):
        lineno = first_data_line + offset
        fields = line_text.split("\t")
        if len(fields) != len(columns):
            kind = "short row" if len(fields) < len(columns) else "long row"
            raise DataError(f"{path}:{lineno}: {kind}: {len(fields)} fields, expected {len(columns)} "
                            f"({line_text[:120]!r})")
        label: int | float | None = None
        if split.kind != "test":
            value = fields[col[task.label]]
            if label_ids is not None:
                if value not in label_ids:
                    raise DataError(f"{path}:{lineno}: unknown label {value!r}; "
                                    f"expected one of {', '.join(task.labels or ())}")
                label = label_ids[value]
            else:
                try:
                    label = float(value)
                except ValueError:
                    raise DataError(f"{path}:{lineno}: score is not a number ({value!r})") from None
                if label != label:  # NaN
                    raise DataError(f"{path}:{lineno}: score is not a number ({value!r})")
        index = fields[col[task.index]] if task.index in col else str(offset)
        examples.append(Example(
            text_a=fields[col[task.text_a]],
            text_b=fields[col[task.text_b]] if task.text_b else None,
            label=label, index=index, line=lineno))
    if not examples:
        raise DataError(f"{path}: file is empty (no data rows)")
    if split.rows is not None and len(examples) != split.rows:
        logger.warning("%s: %d rows, the official file has %d", path, len(examples), split.rows)
    return examples
