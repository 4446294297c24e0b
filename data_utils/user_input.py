"""The user's own rows to predict: a TSV file with a header, or JSON lines, read with one-line errors.

Each row needs the task's text columns (the names in its task definition, e.g. ``sentence1`` and ``sentence2``
for RTE, or the names given as ``text_a``/``text_b``) and may have an id column. TSV files follow the GLUE
files' rules (UTF-8, tab-separated, no quoting, a byte-order mark is ignored). Every problem is a
:class:`~data_utils.glue.DataError` of one line: ``file:line: what is wrong``. Rows come back as
:class:`~data_utils.glue.Example` (no label), so they go through the same tokenization as GLUE files. Files are
read one line at a time (:func:`iter_user_rows`): memory does not grow with the file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_utils.glue import DataError, Example, first_repeat
from data_utils.task_def import TaskDef

FORMATS = ("auto", "tsv", "jsonl")
ID_COLUMNS = ("id", "index")  # looked for, in this order, when no id column is named


@dataclass(frozen=True)
class Columns:
    """Where a row's parts are: the text columns and the id column (None: rows are numbered from 0)."""

    text_a: str
    text_b: str | None
    id: str | None = None


def input_format(path: Path, fmt: str = "auto") -> str:
    """``tsv`` or ``jsonl``: as given, or from the file's extension (.tsv/.txt, .jsonl/.json)."""
    if fmt not in FORMATS:
        raise DataError(f"input format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; "
                    f"use .tsv or .jsonl, or pass --input_format tsv|jsonl")


def task_columns(task: TaskDef, text_a: str | None = None, text_b: str | None = None,
                 id_column: str | None = None) -> Columns:
    """The task's own column names unless others are given; a second text column only for pair tasks."""
    if text_b is not None and task.text_b is None:
        raise DataError(f"task {task.name} takes one sentence; --text_b does not apply")
    return Columns(text_a or task.text_a, (text_b or task.text_b) if task.text_b else None, id_column)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line, without its LF/CRLF, read and decoded one line at a time."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    with f:
        for line, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({raw[exc.start:exc.start + 4]!r})") \
                    from None
            text = text[:-1] if text.endswith("\n") else text
            yield line, text[:-1] if text.endswith("\r") else text


def _id_column(columns: Columns, have: list[str] | set[str], where: str) -> str | None:
    if columns.id is not None:
        if columns.id not in have:
            raise DataError(f"{where}: no id column {columns.id!r}")
        return columns.id
    return next((c for c in ID_COLUMNS if c in have), None)


def _missing_text(columns: Columns, have: list[str] | set[str], where: str) -> None:
    wanted = [c for c in (columns.text_a, columns.text_b) if c is not None]
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(f"{where}: no column {', '.join(map(repr, missing))} (has {', '.join(map(repr, have))}); "
                        f"name the text columns with --text_a/--text_b")


def lone_surrogate(value: str) -> str | None:
    """Where ``value`` holds a lone surrogate (half of a UTF-16 pair, from a JSON escape like ``\\ud800`` or a
    Python string), which cannot be tokenized or written as UTF-8: ``"a lone surrogate ('\\ud800' at character
    9)"``; None for text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate ({value[exc.start]!r} at character {exc.start})"
    return None


def _example(path: Path, line: int, row: int, columns: Columns, get, id_col: str | None) -> Example:
    texts = []
    for col in (columns.text_a, columns.text_b):
        if col is None:
            texts.append(None)
            continue
        value = get(col)
        if not isinstance(value, str):
            raise DataError(f"{path}:{line}: {col!r} must be a string, got {json.dumps(value)[:60]}")
        if not value.strip():
            raise DataError(f"{path}:{line}: empty text in {col!r}")
        texts.append(value)
    index = get(id_col) if id_col is not None else row
    if isinstance(index, (dict, list)) or index is None:
        raise DataError(f"{path}:{line}: the id {id_col!r} must be a string or a number")
    if isinstance(index, float) and not math.isfinite(index):  # Python's json reads NaN, Infinity and 1e999
        raise DataError(f"{path}:{line}: the id {id_col!r} is {json.dumps(index)}, not a finite number (JSON "
                        f"has no NaN or Infinity); give ids as strings or finite numbers")
    for col, value in ((columns.text_a, texts[0]), (columns.text_b, texts[1]), (id_col, index)):
        where = lone_surrogate(value) if isinstance(value, str) else None
        if where:
            raise DataError(f"{path}:{line}: {col!r} holds {where}, which is not text; fix that \\u escape")
    return Example(text_a=texts[0], text_b=texts[1], label=None, index=index, line=line)


def iter_tsv(path: Path, columns: Columns) -> Iterator[Example]:
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: file is empty")
    header = first[1].split("\t")
    repeated = first_repeat(header)
    if repeated is not None:
        raise DataError(f"{path}:1: the header names column {repeated!r} twice ({first[1][:80]!r})")
    _missing_text(columns, header, f"{path}:1")
    id_col = _id_column(columns, header, f"{path}:1")
    col = {name: i for i, name in enumerate(header)}
    rows = 0
    for line, text in lines:
        fields = text.split("\t")
        if len(fields) != len(header):
            raise DataError(f"{path}:{line}: {len(fields)} field(s), the header has {len(header)} "
                            f"({text[:80]!r})")
        yield _example(path, line, rows, columns, lambda c: fields[col[c]], id_col)
        rows += 1
    if not rows:
        raise DataError(f"{path}: no rows after the header")


class _RepeatedKey(Exception):
    """A JSON object that names one key twice (``json`` would keep the last value)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    repeated = first_repeat(k for k, _ in pairs)
    if repeated is not None:
        raise _RepeatedKey(repeated)
    return dict(pairs)


def iter_jsonl(path: Path, columns: Columns) -> Iterator[Example]:
    rows = 0
    id_col: str | None = None
    for line, text in _lines(path):
        if not text.strip():
            continue  # blank lines between records
        try:
            record = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        except _RepeatedKey as exc:
            raise DataError(f"{path}:{line}: the record names key {exc.args[0]!r} twice") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        _missing_text(columns, list(record), f"{path}:{line}")
        if not rows:  # the first record decides the id column; every later one must have it
            id_col = _id_column(columns, list(record), f"{path}:{line}")
        elif id_col is not None and id_col not in record:
            raise DataError(f"{path}:{line}: no id {id_col!r} (the first record has one)")
        elif id_col is None and (later := _id_column(columns, list(record), f"{path}:{line}")) is not None:
            # the rows are numbered because the first record has no id: a later id would be silently lost
            raise DataError(f"{path}:{line}: an id {later!r}, but the first record has none (the rows would be "
                            "numbered and this id lost): give every record an id, or none")
        yield _example(path, line, rows, columns, record.get, id_col)
        rows += 1
    if not rows:
        raise DataError(f"{path}: no records")


def iter_user_rows(path: str | Path, columns: Columns, fmt: str = "auto") -> Iterator[Example]:
    """The rows of a TSV (with header) or JSON-lines file, in file order, read one line at a time; errors are
    raised when the line is reached (the format's, at once)."""
    path = Path(path)
    return iter_tsv(path, columns) if input_format(path, fmt) == "tsv" else iter_jsonl(path, columns)


def read_user_rows(path: str | Path, columns: Columns, fmt: str = "auto") -> list[Example]:
    """The rows of a TSV (with header) or JSON-lines file, in file order."""
    return list(iter_user_rows(path, columns, fmt))
