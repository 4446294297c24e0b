"""A second GLUE file reader for the tests: the whole file's bytes decoded and split at once, then parsed by the
same row checks as ``data_utils.glue.iter_split``, which reads and decodes one line at a time. The tests hold the
streaming reader to this one: the same rows, the same skipped lines, the same one-line errors, the same count of
data lines."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_utils.glue import DataError, Example, _parse_lines, check_bad_rows
from data_utils.task_def import SplitDef, TaskDef


@dataclass
class SplitRows:
    """What :func:`parse_split` read: the good rows, and the ``(line, reason)`` of every skipped one."""

    examples: list[Example]
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # MRPC's files begin with a byte-order mark
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.start + 4]
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({bad!r})") from None


def _lines(text: str) -> list[str]:
    """The lines without their LF / CRLF endings, and without the empty lines that end the file."""
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def data_line_count(raw: bytes, split: SplitDef) -> int:
    """How many data lines (rows, good or malformed) the file's bytes hold: the lines after the header, without
    the empty lines that end the file."""
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in raw.split(b"\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    return max(0, len(lines) - (1 if split.header else 0))


def parse_split(path: Path, raw: bytes, task: TaskDef, split: SplitDef, bad_rows: str = "error") -> SplitRows:
    """Parse the bytes ``raw`` of the file ``path`` (named in errors) as ``split`` of ``task``."""
    check_bad_rows(bad_rows)
    out = SplitRows(examples=[])
    out.examples = list(_parse_lines(path, iter(_lines(_decode(path, raw))), task, split, bad_rows, out.skipped))
    return out
