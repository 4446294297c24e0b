"""GLUE test-server submissions: write the 11 prediction files and their zip, and validate a zip.

The server takes one flat zip holding one file per test split (``CoLA.tsv`` ... ``AX.tsv``; the names are
the ``submission`` keys of the test splits in ``glue_tasks.yml``). Each file is UTF-8 with LF line endings,
starts with the header line ``index<TAB>prediction`` and has one row per test example, in test-file
order. Classification tasks write a label string from ``task.labels``; regression (STS-B) writes a score
clipped to ``task.score_range`` with exactly three decimals.

Everything here is derived from the task definitions: file names, expected row counts, label vocabularies.

Command line::

    python -m data_utils.submission --check submission.zip [--glue_dir DIR] [--task_def FILE ...]
    python -m data_utils.submission --baseline OUT_DIR [--glue_dir DIR] [--task_def FILE ...]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import operator
import re
import shutil
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from data_utils import atomic
from data_utils.glue import DataError, iter_split, split_path
from data_utils.output_paths import check_writable_folder
from data_utils.task_def import ConfigError, SplitDef, TaskDef, load_task_defs

logger = logging.getLogger(__name__)

HEADER = "index\tprediction"
MAX_EXAMPLES = 3  # how many offending lines a problem message quotes
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # a score as every reader of a TSV reads it
SCORES_FILE = "dev_scores.json"  # written beside the submission files by mt_dnn.predict
TEMP_PREFIX = ".tmp-submission-"  # the writer's temporary folder inside the output folder


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------

def submission_files(tasks: dict[str, TaskDef]) -> dict[str, tuple[TaskDef, SplitDef]]:
    """Submission file name -> (task, test split), for every test split that has a ``submission`` name."""
    files: dict[str, tuple[TaskDef, SplitDef]] = {}
    for task in tasks.values():
        for split in task.splits_of("test"):
            if not split.submission:
                continue
            if split.submission in files:
                other = files[split.submission]
                raise ConfigError(f"submission file {split.submission} is named by both {other[0].name}/"
                                  f"{other[1].name} and {task.name}/{split.name}")
            files[split.submission] = (task, split)
    return files


def format_prediction(task: TaskDef, value: object) -> str:
    """One prediction as the server wants it.

    Classification: a class id (an int, numpy ints included) becomes its label string; a label string
    passes through. Regression: a number becomes a float clipped to ``task.score_range``, with 3 decimals.
    """
    if task.type == "classification":
        labels = task.labels or ()
        if isinstance(value, str):
            if value in labels:
                return value
            raise ValueError(f"task {task.name}: {value!r} is not one of its labels {', '.join(labels)}")
        if isinstance(value, bool):
            raise ValueError(f"task {task.name}: a class id must be an int, got {value!r}")
        try:
            class_id = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"task {task.name}: a class id must be an int, got {value!r}") from None
        if not 0 <= class_id < len(labels):
            raise ValueError(f"task {task.name}: class id {class_id} outside 0..{len(labels) - 1}")
        return labels[class_id]
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"task {task.name}: a score must be a number, got {value!r}") from None
    if not math.isfinite(score):
        raise ValueError(f"task {task.name}: a score must be finite, got {score!r}")
    if task.score_range is not None:
        low, high = task.score_range
        score = min(max(score, low), high)
    text = f"{score:.3f}"
    return "0.000" if float(text) == 0.0 else text  # never "-0.000"


def baseline_rows(task: TaskDef, split: SplitDef, glue_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """Rows that predict ``task.baseline_label`` everywhere.

    The indices are those of the real test file when ``glue_dir`` holds it, else ``0 .. rows-1``.
    """
    prediction = format_prediction(task, task.baseline_label if task.labels else float(task.baseline_label))
    if glue_dir is not None and split_path(glue_dir, task, split).is_file():
        indices = [ex.index for ex in iter_split(split_path(glue_dir, task, split), task, split)]
    else:
        if split.rows is None:
            raise ConfigError(f"task {task.name}, split {split.name}: no row count and no test file "
                              f"to take the indices from")
        indices = [str(i) for i in range(split.rows)]
    return [(index, prediction) for index in indices]


def _write_file(path: Path, name: str, rows: Iterable[tuple[str, str]]) -> int:
    """Write a submission file row by row (never held whole); refuses a row that would break the format.
    Returns the number of rows."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(HEADER + "\n")
        for n, row in enumerate(rows, start=1):
            if len(row) != 2 or not all(isinstance(x, str) for x in row):
                raise ValueError(f"{name}: row {n - 1} must be two strings (index, prediction), got {row!r}")
            for x in row:
                if not x or any(c in x for c in "\t\r\n"):
                    raise ValueError(f"{name}: row {n - 1} has an empty value or a tab/newline in it: {row!r}")
            f.write(f"{row[0]}\t{row[1]}\n")
    return n


def check_output(out_dir: str | Path, zip_name: str = "submission.zip", names: Iterable[str] | None = None) -> None:
    """Refuse, before any work is done, an output folder that cannot be one and a zip name that is not plain.

    ``out_dir`` must be a folder or not exist yet, with no file in the way on its path, and it (or, when it does
    not exist yet, the nearest existing folder above it) must take new files. Of the names written there (the
    submission files ``names``, by default those of the packaged GLUE tasks, the zip and ``dev_scores.json``),
    none may be something other than a regular file (a folder, a pipe): it could not be replaced.
    """
    if "/" in zip_name or "\\" in zip_name or not zip_name.endswith(".zip"):
        raise ConfigError(f"zip name must be a plain *.zip file name, got {zip_name!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder (the submission files go into a folder)")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{out_dir}: {parent} is a file, not a folder")
            break
    if out_dir.is_dir():
        _check_targets(out_dir, [*(submission_files(load_task_defs()) if names is None else names), zip_name,
                                 SCORES_FILE])
    # the files are written in a temporary folder inside out_dir, then renamed into it (never across devices)
    check_writable_folder(out_dir, str(out_dir))


def _check_targets(out_dir: Path, names: Iterable[str]) -> None:
    """Refuse a name in ``out_dir`` that exists and is not a regular file (a symlink to one is replaced)."""
    for name in names:
        path = out_dir / name
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: exists and is not a file (the submission writes a file of that name there)")


def _exact_files(official: dict, names) -> None:
    missing = sorted(set(official) - set(names))
    extra = sorted(set(names) - set(official))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unexpected {', '.join(extra)}"] if extra else [])
        raise ConfigError(f"a GLUE submission has exactly the files {', '.join(official)}: {'; '.join(parts)}")


class SubmissionWriter:
    """Writes the submission files one at a time, each as its rows come (streamed to disk, never held whole).

    Files go into a hidden temporary folder inside ``out_dir`` (``.tmp-submission-*``: the moves into place are
    renames within one folder, even when ``out_dir`` is a mount point); :meth:`finish` (once every official file
    is there) writes the flat zip and moves everything into place, the zip last. Leaving a ``with`` block by an
    exception, or :meth:`abort`, removes the temporary folder, and ``out_dir`` (with the folders above it) when
    this writer made it and it is empty: a failure leaves no partial file in ``out_dir``.
    """

    def __init__(self, out_dir: str | Path, zip_name: str = "submission.zip", tasks: dict[str, TaskDef] | None = None):
        self.official = submission_files(load_task_defs() if tasks is None else tasks)
        check_output(out_dir, zip_name, self.official)
        self.out_dir, self.zip_name = Path(out_dir), zip_name
        self.rows: dict[str, int] = {}  # file name -> rows written
        self.tmp: Path | None = None
        self.made: list[Path] = []  # folders this writer made, deepest first (removed again on a failure)

    def __contains__(self, name: str) -> bool:
        return name in self.rows

    def __enter__(self) -> "SubmissionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def add(self, name: str, rows: Iterable[tuple[str, str]]) -> int:
        """Write the file ``name`` from its ``(index, prediction)`` rows (formatted, see :func:`format_prediction`)
        in the order given; returns the number of rows."""
        if name not in self.official or name in self.rows:
            raise ConfigError(f"{name}: {'written twice' if name in self.rows else 'not a GLUE submission file'}")
        if self.tmp is None:
            missing = [d for d in (self.out_dir, *self.out_dir.parents) if not d.exists()]
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.made = [d for d in missing if d.is_dir()]
            self.tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.out_dir))
        try:
            self.rows[name] = _write_file(self.tmp / name, name, rows)
        except OSError as exc:  # a full disk: one line, and the with block removes the temporary folder
            raise ConfigError(f"{self.out_dir / name}: cannot write it ({exc.strerror or exc})") from None
        return self.rows[name]

    def finish(self) -> Path:
        """The zip of every official file (task-definition order), then everything moved into ``out_dir``.

        A name in ``out_dir`` that became a folder (or another non-file) since the writer started is refused
        before anything is moved; a move that fails anyway is a :class:`ConfigError` naming the file, and the zip,
        moved last, is then not written."""
        _exact_files(self.official, self.rows)
        assert self.tmp is not None
        final = [*self.official, self.zip_name]  # last: the zip appears only when complete
        _check_targets(self.out_dir, final)
        try:
            with zipfile.ZipFile(self.tmp / self.zip_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name in self.official:
                    zf.write(self.tmp / name, arcname=name)
        except OSError as exc:
            raise ConfigError(f"{self.out_dir / self.zip_name}: cannot write it ({exc.strerror or exc})") from None
        for name in final:
            try:
                atomic.commit(self.tmp / name, self.out_dir / name)
            except OSError as exc:
                raise ConfigError(f"{self.out_dir / name}: cannot move it into place ({exc.strerror or exc}); "
                                  f"{self.zip_name} was not written") from None
        self.made = []  # out_dir holds the submission now: kept
        self.abort()
        logger.info("wrote %d submission files and %s", len(self.official), self.out_dir / self.zip_name)
        older = sorted(p.name for p in self.out_dir.glob("*.zip") if p.name != self.zip_name)
        if older:  # e.g. an earlier prediction under another --zip_name: its rows are not these
            logger.warning("%s also holds %s from an earlier run: not these predictions (upload %s)", self.out_dir,
                           ", ".join(older), self.zip_name)
        return self.out_dir / self.zip_name

    def abort(self) -> None:
        """Remove the temporary folder, and the folders this writer made when they are empty."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        for folder in self.made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty one
        self.made = []


def write_submission(out_dir: str | Path, rows_by_file: dict[str, Iterable[tuple[str, str]]],
                     zip_name: str = "submission.zip", tasks: dict[str, TaskDef] | None = None) -> Path:
    """Write every submission file into ``out_dir`` and the flat zip ``out_dir/zip_name``; return the zip.

    ``rows_by_file`` maps each official file name to its ``(index, prediction)`` rows (already formatted,
    see :func:`format_prediction`; any iterable), written in the order given. The set of files must be exactly
    the official one (from ``tasks``, by default the packaged GLUE tasks). Everything is first written into a
    temporary folder inside ``out_dir`` and then moved into place, so a failure leaves no partial file.
    """
    writer = SubmissionWriter(out_dir, zip_name, tasks)
    _exact_files(writer.official, rows_by_file)
    with writer:
        for name in writer.official:  # task-definition order
            writer.add(name, rows_by_file[name])
        return writer.finish()


# ---------------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------------

@dataclass
class FileReport:
    """What the check found in one submission file."""

    name: str
    rows: int | None = None  # data rows read (None when the file could not be read)
    problems: list[str] = field(default_factory=list)


@dataclass
class SubmissionReport:
    """Problems of the zip as a whole plus one :class:`FileReport` per official file."""

    problems: list[str] = field(default_factory=list)
    files: dict[str, FileReport] = field(default_factory=dict)

    def all_problems(self) -> list[str]:
        out = list(self.problems)
        for report in self.files.values():
            out += [f"{report.name}: {p}" for p in report.problems]
        return out


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_EXAMPLES])
    return shown + (f" (and {len(items) - MAX_EXAMPLES} more)" if len(items) > MAX_EXAMPLES else "")


def _check_values(task: TaskDef, values: list[tuple[int, str]]) -> list[str]:
    """Problems with the predictions of one file; ``values`` are (line number, prediction)."""
    problems: list[str] = []
    if task.type == "classification":
        vocab = set(task.labels or ())
        bad = [f"line {ln}: {v!r}" for ln, v in values if v not in vocab]
        if bad:
            problems.append(f"{len(bad)} label(s) not in {', '.join(task.labels or ())}: {_examples(bad)}")
        return problems
    not_float, not_finite, outside = [], [], []
    low, high = task.score_range if task.score_range is not None else (-math.inf, math.inf)
    for ln, v in values:
        if not PLAIN_NUMBER.fullmatch(v) and v.lower().lstrip("+-") not in ("inf", "infinity", "nan"):
            # Python's float() also reads ' 3.0' and '1_0', which other readers of the file may not
            not_float.append(f"line {ln}: {v!r}")
            continue
        x = float(v)
        if not math.isfinite(x):
            not_finite.append(f"line {ln}: {v!r}")
        elif not low <= x <= high:
            outside.append(f"line {ln}: {v!r}")
    if not_float:
        problems.append(f"{len(not_float)} score(s) not a number: {_examples(not_float)}")
    if not_finite:
        problems.append(f"{len(not_finite)} score(s) not finite: {_examples(not_finite)}")
    if outside:
        problems.append(f"{len(outside)} score(s) outside [{low:g}, {high:g}]: {_examples(outside)}")
    return problems


def _check_indices(task: TaskDef, split: SplitDef, indices: list[tuple[int, str]],
                   glue_dir: str | Path | None) -> list[str]:
    """Duplicate indices; and, when the test file is under ``glue_dir``, the same ids in the same order."""
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    repeats: list[str] = []
    for ln, index in indices:
        if index in first_seen:
            repeats.append(f"{index!r} (lines {first_seen[index]} and {ln})")
        else:
            first_seen[index] = ln
    if repeats:
        problems.append(f"{len(repeats)} duplicate index(es): {_examples(repeats)}")
    if glue_dir is None or not split_path(glue_dir, task, split).is_file():
        return problems
    try:
        expected = [ex.index for ex in iter_split(split_path(glue_dir, task, split), task, split)]
    except DataError as exc:
        return problems + [f"cannot compare indices with the test file: {exc}"]
    got = [index for _, index in indices]
    missing = sorted(set(expected) - set(got), key=_index_key)
    unknown = sorted(set(got) - set(expected), key=_index_key)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} test id(s) missing: {_examples(missing)}")
        if unknown:
            parts.append(f"{len(unknown)} id(s) not in the test file: {_examples(unknown)}")
        problems.append(f"indices differ from {split_path(glue_dir, task, split)}: {'; '.join(parts)}")
    elif not repeats and got != expected:
        at = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        problems.append(f"rows are not in test-file order (line {at + 2} has index {got[at]!r}, "
                        f"the test file has {expected[at]!r})")
    return problems


def _index_key(index: str) -> tuple[int, int | str]:
    return (0, int(index)) if index.isdigit() else (1, index)


def _check_file(task: TaskDef, split: SplitDef, name: str, data: bytes,
                glue_dir: str | Path | None) -> FileReport:
    report = FileReport(name)
    if not data.strip():
        report.problems.append("empty file")
        return report
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        report.problems.append(f"not UTF-8 (line {line}: bytes {data[exc.start:exc.start + 4]!r})")
        return report
    if "\r" in text:
        line = text.count("\n", 0, text.index("\r")) + 1
        report.problems.append(f"CR or CRLF line endings (first at line {line}); use LF only")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        report.problems.append("starts with a byte-order mark")
        text = text[1:]
    if not text.strip():  # nothing but a byte-order mark and blank space
        report.problems.append("empty file")
        return report
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if lines[0] != HEADER:
        report.problems.append(f"header is {lines[0][:60]!r}, expected {HEADER!r}")
    body = lines[1:]
    report.rows = len(body)
    if split.rows is not None and len(body) != split.rows:
        report.problems.append(f"{len(body)} rows, expected {split.rows}")
    malformed: list[str] = []
    indices: list[tuple[int, str]] = []
    values: list[tuple[int, str]] = []
    for offset, line_text in enumerate(body):
        ln = offset + 2
        fields = line_text.split("\t")
        if len(fields) != 2 or not fields[0]:
            malformed.append(f"line {ln}: {line_text[:40]!r}")
            continue
        indices.append((ln, fields[0]))
        values.append((ln, fields[1]))
    if malformed:
        report.problems.append(f"{len(malformed)} row(s) are not 'index<TAB>prediction': {_examples(malformed)}")
    report.problems += _check_indices(task, split, indices, glue_dir)
    report.problems += _check_values(task, values)
    return report


def inspect_submission(zip_path: str | Path, tasks: dict[str, TaskDef],
                       glue_dir: str | Path | None = None) -> SubmissionReport:
    """Check a submission zip; the report holds per-file row counts and problems (see :func:`check_submission`)."""
    zip_path = Path(zip_path)
    official = submission_files(tasks)
    report = SubmissionReport()
    if not zip_path.is_file():
        report.problems.append(f"{zip_path}: no such file")
        return report
    encrypted: set[str] = set()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            for info in infos:  # the CRC of every member (zipfile.testzip, but an encrypted member is not read)
                if info.flag_bits & 0x1:
                    encrypted.add(info.filename)
                    continue
                try:
                    with zf.open(info) as member:
                        while member.read(1 << 20):
                            pass
                except zipfile.BadZipFile:
                    report.problems.append(f"{zip_path}: corrupt zip (member {info.filename} fails its CRC check)")
                    return report
            contents: dict[str, bytes] = {}
            seen: set[str] = set()
            for info in infos:
                name = info.filename
                if name in seen:
                    report.problems.append(f"{name} appears more than once in the zip")
                    continue
                seen.add(name)
                if "/" in name or "\\" in name:
                    report.problems.append(f"nested path {name!r}: files must sit at the top of the zip")
                elif name not in official:
                    report.problems.append(f"unexpected file {name!r} (expected only {', '.join(official)})")
                elif info.flag_bits & 0x1:
                    continue  # reported with the file below
                else:
                    contents[name] = zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        report.problems.append(f"{zip_path}: not a readable zip file ({exc})")
        return report
    for name, (task, split) in official.items():
        if name in encrypted and name not in contents:
            report.files[name] = FileReport(name, problems=["encrypted (password-protected): the GLUE server "
                                                            "cannot read it"])
        elif name not in contents:
            report.files[name] = FileReport(name, problems=["missing from the zip"])
        else:
            report.files[name] = _check_file(task, split, name, contents[name], glue_dir)
    return report


def check_submission(zip_path: str | Path, tasks: dict[str, TaskDef],
                     glue_dir: str | Path | None = None) -> list[str]:
    """One line per problem found in a submission zip; an empty list means it is valid.

    Checked: the zip opens and its members pass their CRC; exactly the official files, flat, none encrypted;
    each file is non-empty UTF-8 with LF endings, the exact header, the official row count,
    ``index<TAB>prediction`` rows, no repeated index, labels from the task's vocabulary, finite in-range scores.
    With ``glue_dir``, the indices of each file are compared with those of the test file there (when present).
    """
    return inspect_submission(zip_path, tasks, glue_dir).all_problems()


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

def _print_report(zip_path: Path, report: SubmissionReport, out: TextIO) -> None:
    width = max([len("file")] + [len(n) for n in report.files])
    print(f"{'file':<{width}}  {'rows':>7}  status", file=out)
    for name, fr in report.files.items():
        rows = "-" if fr.rows is None else str(fr.rows)
        status = "ok" if not fr.problems else f"{len(fr.problems)} problem(s)"
        print(f"{name:<{width}}  {rows:>7}  {status}", file=out)
    problems = report.all_problems()
    if not problems:
        print(f"OK: {zip_path} is a valid GLUE submission", file=out)
        return
    for p in problems:
        print(f"PROBLEM: {p}", file=out)
    print(f"INVALID: {zip_path} has {len(problems)} problem(s)", file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_utils.submission",
        description="Check a GLUE test-server submission zip, or write a baseline (majority class) one.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", metavar="ZIP", help="validate this submission zip")
    action.add_argument("--baseline", metavar="OUT_DIR",
                        help="write a baseline submission (each task's baseline_label) into OUT_DIR")
    parser.add_argument("--glue_dir", help="GLUE data folder: test ids are taken from / compared with its test files")
    parser.add_argument("--task_def", action="append", default=[], metavar="FILE",
                        help="extra task definition YAML (adds or overrides tasks); may repeat")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        tasks = load_task_defs(args.task_def)
        if args.glue_dir is not None and not Path(args.glue_dir).is_dir():
            raise ConfigError(f"--glue_dir {args.glue_dir}: no such folder")
        if args.baseline is not None:
            rows = {name: baseline_rows(task, split, args.glue_dir)
                    for name, (task, split) in submission_files(tasks).items()}
            path = write_submission(args.baseline, rows, tasks=tasks)
            # validated as mt_dnn.predict does (a test file of another row count fails); the test files' warnings
            # were given when the rows were read and are not repeated
            glue_log = logging.getLogger("data_utils.glue")
            level = glue_log.level
            glue_log.setLevel(logging.ERROR)
            try:
                problems = check_submission(path, tasks, args.glue_dir)
            finally:
                glue_log.setLevel(level)
            if problems:
                for problem in problems:
                    print(f"PROBLEM: {problem}", file=sys.stderr)
                print(f"error: {path} failed validation ({len(problems)} problems)", file=sys.stderr)
                return 1
            print(f"wrote {path}")
            return 0
        zip_path = Path(args.check)
        if not zip_path.is_file():
            print(f"error: {zip_path}: no such file", file=sys.stderr)
            return 2
        report = inspect_submission(zip_path, tasks, args.glue_dir)
    except (ConfigError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_report(zip_path, report, sys.stdout)
    return 0 if not report.all_problems() else 1


def cli() -> None:
    """Console-script entry point (``mt-dnn-check-submission``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
