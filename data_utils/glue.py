"""Readers of the official GLUE files, exactly as distributed.

Files are tab-separated with no quoting (GLUE's own loaders use ``csv.QUOTE_NONE``), UTF-8, a header line
except CoLA's train/dev, and MRPC's header starts with a byte-order mark. Empty lines at the end of a file
are not rows. Every problem stops with a :class:`DataError` whose message is one line:
``path:line: what is wrong (the value)``.

Files are read one line at a time (:func:`iter_split`), so memory does not grow with the file's size.
Rows are checked: the number of fields, the label (one of the task's labels), and a regression score
(a finite number inside the task's ``score_range``). With ``bad_rows="skip"`` a malformed row of a train
or dev file is dropped instead, and one warning gives the count and the first few lines; test files are
always read strictly, since every test row needs a prediction.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_utils.task_def import ConfigError, SplitDef, TaskDef

logger = logging.getLogger(__name__)

BAD_ROWS = ("error", "skip")
SHOW_SKIPPED = 3  # how many skipped lines the warning names


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


def check_bad_rows(bad_rows: str) -> None:
    if bad_rows not in BAD_ROWS:
        raise ConfigError(f"--bad_rows {bad_rows!r}; choose one of {', '.join(BAD_ROWS)}")


def skipped_summary(path: Path, skipped: list[tuple[int, str]]) -> str:
    """The one warning line for dropped rows: the count and the first few ``path:line (reason)``."""
    shown = ", ".join(f"{path}:{line} ({reason})" for line, reason in skipped[:SHOW_SKIPPED])
    more = f" and {len(skipped) - SHOW_SKIPPED} more" if len(skipped) > SHOW_SKIPPED else ""
    return f"{path}: skipped {len(skipped)} malformed row(s) (--bad_rows skip): {shown}{more}"


class _BadRow(Exception):
    """A malformed row: ``reason`` is the short form (for the skip warning), ``detail`` the error's tail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def first_repeat(names) -> str | None:
    """The first name that ``names`` holds twice (a header or a record naming a column twice), else None."""
    seen: set = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _score(task: TaskDef, value: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise _BadRow("score is not a number", f"score is not a number ({value!r})") from None
    if score != score:  # NaN
        raise _BadRow("score is not a number", f"score is not a number ({value!r})")
    if not math.isfinite(score):
        raise _BadRow("score is not finite", f"score is not finite ({value!r})")
    if task.score_range is not None:
        low, high = task.score_range
        if not low <= score <= high:
            raise _BadRow(f"score {value} outside [{low:g}, {high:g}]",
                          f"score {value!r} is outside task {task.name}'s score_range [{low:g}, {high:g}]")
    return score


def read_split(glue_dir: str | Path, task: TaskDef, split: SplitDef, bad_rows: str = "error") -> list[Example]:
    """Read one split of a task. Labels are required on train/dev splits and ignored on test splits."""
    path = split_path(glue_dir, task, split)
    return list(iter_split(path, task, split, bad_rows))


def _open(path: Path, task: TaskDef, split: SplitDef):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (task {task.name}, split {split.name})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


_EMPTY_LINES = (b"\n", b"\r\n", b"\r", b"")


def file_digest(path: Path, task: TaskDef, split: SplitDef) -> tuple[bytes, int]:
    """The sha256 digest of the file's bytes and its number of data lines (rows, good or malformed: the lines
    after the header, not counting the empty lines that end the file), read line by line: memory independent of
    the file's size."""
    h = hashlib.sha256()
    lines = last_text = 0
    with _open(path, task, split) as f:
        for raw in f:
            h.update(raw)
            lines += 1
            if raw not in _EMPTY_LINES:
                last_text = lines  # empty lines at the end are not rows
    return h.digest(), max(0, last_text - (1 if split.header else 0))


def _file_lines(path: Path, task: TaskDef, split: SplitDef, hasher=None) -> Iterator[str]:
    """The file's lines without their LF / CRLF endings and without the empty lines that end it, decoded one at a
    time; ``hasher`` (a hashlib object) is fed every byte read."""
    with _open(path, task, split) as f:
        empty = 0  # empty lines seen and not yet given: they are rows only if a non-empty line follows
        for lineno, raw in enumerate(f, start=1):
            if hasher is not None:
                hasher.update(raw)
            if raw in _EMPTY_LINES:
                empty += 1
                continue
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # strips MRPC's byte-order mark
            except UnicodeDecodeError as exc:
                bad = raw[exc.start:exc.start + 4]
                raise DataError(f"{path}:{lineno}: bytes that are not UTF-8 ({bad!r})") from None
            for _ in range(empty):
                yield ""
            empty = 0
            text = text[:-1] if text.endswith("\n") else text
            yield text[:-1] if text.endswith("\r") else text


def iter_split(path: Path, task: TaskDef, split: SplitDef, bad_rows: str = "error",
               skipped: list[tuple[int, str]] | None = None, hasher=None) -> Iterator[Example]:
    """The rows of the file ``path`` as ``split`` of ``task``, read and checked one line at a time (memory
    independent of the file's size). Malformed rows dropped by ``bad_rows="skip"`` are appended to ``skipped``;
    ``hasher`` is fed the file's bytes. Errors are raised when the row is reached, the end-of-file ones (no
    usable row) at the end."""
    check_bad_rows(bad_rows)
    return _parse_lines(path, _file_lines(path, task, split, hasher), task, split, bad_rows,
                        [] if skipped is None else skipped)


def _parse_lines(path: Path, lines: Iterator[str], task: TaskDef, split: SplitDef, bad_rows: str,
                 skipped: list[tuple[int, str]]) -> Iterator[Example]:
    """Parse the decoded lines of ``path`` (no line endings, no empty lines at the end) one at a time."""
    strict = bad_rows == "error" or split.kind == "test"
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: file is empty")
    if split.header:
        columns = first.split("\t")
        repeated = first_repeat(columns)
        if repeated is not None:
            raise DataError(f"{path}:1: wrong header: column {repeated!r} appears twice ({first[:200]!r})")
        first_data_line = 2
        body: Iterator[str] = lines
    else:
        columns = list(split.columns or ())
        first_data_line = 1
        body = itertools.chain([first], lines)
    needed = [task.text_a] + ([task.text_b] if task.text_b else [])
    needed += [task.index] if split.kind == "test" else [task.label]
    if split.kind == "test" and task.index not in columns:
        needed.remove(task.index)  # a test file without an id column is numbered by row
    missing = [c for c in needed if c not in columns]
    if missing:
        if split.header:
            raise DataError(f"{path}:1: wrong header: no column {', '.join(map(repr, missing))} "
                            f"({first[:200]!r})")
        raise DataError(f"{path}: task {task.name}'s columns lack {', '.join(map(repr, missing))}")
    col = {name: i for i, name in enumerate(columns)}
    label_ids = {lab: i for i, lab in enumerate(task.labels)} if task.labels else None
    hint = "" if split.kind == "test" else "; --bad_rows skip drops such rows"
    good = 0
    for offset, line_text in enumerate(body):
        lineno = first_data_line + offset
        fields = line_text.split("\t")
        try:
            if len(fields) != len(columns):
                kind = "short row" if len(fields) < len(columns) else "long row"
                raise _BadRow(kind, f"{kind}: {len(fields)} fields, expected {len(columns)} ({line_text[:120]!r})")
            label: int | float | None = None
            if split.kind != "test":
                value = fields[col[task.label]]
                if label_ids is not None:
                    if value not in label_ids:
                        raise _BadRow(f"unknown label {value[:40]!r}", f"unknown label {value!r}; "
                                      f"expected one of {', '.join(task.labels or ())}")
                    label = label_ids[value]
                else:
                    label = _score(task, value)
        except _BadRow as bad:
            if strict:
                raise DataError(f"{path}:{lineno}: {bad.detail}{hint}") from None
            skipped.append((lineno, bad.reason))
            continue
        index = fields[col[task.index]] if task.index in col else str(offset)
        good += 1
        yield Example(text_a=fields[col[task.text_a]], text_b=fields[col[task.text_b]] if task.text_b else None,
                      label=label, index=index, line=lineno)
    if not good:
        if skipped:
            line, reason = skipped[0]
            raise DataError(f"{path}: no usable rows: all {len(skipped)} data rows are malformed "
                            f"(first: line {line}, {reason})")
        raise DataError(f"{path}: file is empty (no data rows)")
    if skipped:
        logger.warning(skipped_summary(path, skipped))
    if split.rows is not None and good + len(skipped) != split.rows:
        logger.warning("%s: %d rows, the official file has %d", path, good + len(skipped), split.rows)
