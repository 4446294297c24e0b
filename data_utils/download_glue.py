"""Download the official GLUE task archives into a GLUE data folder (for users with internet access).

Usage::

    python -m data_utils.download_glue --tasks all --data_dir glue_data
    python -m data_utils.download_glue --tasks cola,sst,mrpc --data_dir glue_data [--base_url URL] [--retries 3]

Each task comes from the public archive that GLUE's own download script used (``<base_url>/glue/data/<Name>.zip``;
the diagnostic set is a single ``AX.tsv``). MRPC is not an archive: its two ``msr_paraphrase_*.txt`` files
(SentEval's copy) are split into train/dev by ``dev_ids.tsv``, here, as GLUE's script does.

Downloads go to ``DATA_DIR/NAME.part`` and resume with an HTTP Range request when interrupted; connection
errors and HTTP 5xx are retried with exponential backoff. An archive must pass ``zipfile.testzip()`` and unpack
to the layout of the task definitions (every split's file, with the official row count, read by
:func:`data_utils.glue.read_split`) before it is moved, in one ``os.replace``, to ``DATA_DIR/<data_dir>``.
A task already present and valid is skipped. Every error is one line, exit status 1.

The expected layout comes from the task definitions, so ``--task_def FILE`` (or the ``tasks`` argument of
:func:`download_tasks`) can describe other row counts, e.g. for small test archives.
"""
from __future__ import annotations

import argparse
import http.client
import logging
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from data_utils import atomic
from data_utils.glue import DataError, read_split, split_path
from data_utils.task_def import ConfigError, TaskDef, load_task_defs

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com"
CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    """Where a task comes from: ``kind`` is zip (an archive), tsv (one file) or mrpc (three files to split)."""

    kind: str
    paths: tuple[str, ...]  # URL paths under the base URL


SOURCES: dict[str, Source] = {
    "cola": Source("zip", ("glue/data/CoLA.zip",)),
    "sst": Source("zip", ("glue/data/SST-2.zip",)),
    "mrpc": Source("mrpc", ("senteval/senteval_data/msr_paraphrase_train.txt",
                            "senteval/senteval_data/msr_paraphrase_test.txt",
                            "glue/data/mrpc_dev_ids.tsv")),
    "stsb": Source("zip", ("glue/data/STS-B.zip",)),
    "qqp": Source("zip", ("glue/data/QQP-clean.zip",)),
    "mnli": Source("zip", ("glue/data/MNLI.zip",)),
    "qnli": Source("zip", ("glue/data/QNLIv2.zip",)),
    "rte": Source("zip", ("glue/data/RTE.zip",)),
    "wnli": Source("zip", ("glue/data/WNLI.zip",)),
    "ax": Source("tsv", ("glue/data/AX.tsv",)),
}

# Other spellings accepted by --tasks (GLUE's script used CoLA, SST, STS, diagnostic, ...).
ALIASES = {"sst-2": "sst", "sst2": "sst", "sts": "stsb", "sts-b": "stsb", "diagnostic": "ax"}

MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String"


class DownloadError(RuntimeError):
    """A download or an archive that cannot be used: reported to the user as one line."""


class _Retryable(Exception):
    """A failure worth another try (connection trouble, HTTP 5xx, a body cut short)."""


# ---------------------------------------------------------------------------------------------------
# Fetching one file
# ---------------------------------------------------------------------------------------------------

def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    return int(match.group(1)) if match else None


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """One attempt to complete ``part``: resume it with a Range request when it holds bytes already."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mt-dnn-glue-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our .part is no prefix of what the server has now (or is complete)
            total = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
            exc.close()
            if total and int(total.group(1)) == have:
                return
            logger.warning("%s: server refused to resume at byte %d; starting again", url, have)
            part.unlink()
            raise _Retryable("range not satisfiable") from None
        exc.close()
        if exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retryable(f"connection failed ({reason})") from None
    with response:
        if response.status == 206 and have:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Retryable(f"server resumed at byte {start}, expected {have}")
            mode = "ab"
            logger.info("%s: resuming at byte %d", url, have)
        else:
            if have:
                logger.info("%s: server ignored the Range request; downloading from the start", url)
            mode, have = "wb", 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with open(part, mode) as fh:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, reset, timeout
                    raise _Retryable(f"transfer interrupted after {have + received} bytes ({exc!r})") from None
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
    if expected is not None and received < expected:
        raise _Retryable(f"transfer cut short: {received} of {expected} bytes")


def fetch(url: str, dest: Path, retries: int = 3, backoff: float = 1.0, timeout: float = 60.0,
          sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (kept between tries and runs, and resumed).

    Connection errors, HTTP 5xx and short bodies are retried ``retries`` times, waiting ``backoff * 2**k``
    seconds before try k+1. Other HTTP errors fail at once. ``dest`` appears only when complete.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout)
        except _Retryable as exc:
            if attempt == retries:
                again = (f"run again to resume from {part}" if part.is_file() and part.stat().st_size
                         else "nothing was downloaded; run again")
                raise DownloadError(f"{url}: {exc}; gave up after {retries + 1} tries ({again})") from None
            wait = backoff * 2 ** attempt
            logger.warning("%s: %s; retrying in %.1fs (%d/%d)", url, exc, wait, attempt + 1, retries)
            sleep(wait)
            continue
        atomic.commit(part, dest)
        return dest
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------
# Layout checks
# ---------------------------------------------------------------------------------------------------

def check_task_dir(glue_dir: str | Path, task: TaskDef) -> None:
    """Raise :class:`DownloadError` unless ``glue_dir/<data_dir>`` holds every split with its official row count."""
    for split in task.splits.values():
        path = split_path(glue_dir, task, split)
        if not path.is_file():
            raise DownloadError(f"{path}: missing (task {task.name}, split {split.name})")
        try:
            rows = len(read_split(glue_dir, task, split))
        except DataError as exc:
            raise DownloadError(str(exc)) from None
        if split.rows is not None and rows != split.rows:
            raise DownloadError(f"{path}: {rows} rows, the official file has {split.rows}")


def is_task_present(glue_dir: str | Path, task: TaskDef) -> bool:
    """True when the task's folder is already complete and valid."""
    if not (Path(glue_dir) / task.data_dir).is_dir():
        return False
    try:
        check_task_dir(glue_dir, task)
    except DownloadError as exc:
        logger.info("task %s present but not valid: %s", task.name, exc)
        return False
    return True


def _unzip(archive: Path, into: Path) -> None:
    """Test and extract an archive; refuses members that would land outside ``into``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{archive.name}: corrupt archive (member {bad} fails its CRC check)")
            for name in zf.namelist():
                pure = PurePosixPath(name)
                if pure.is_absolute() or ".." in pure.parts or "\\" in name:
                    raise DownloadError(f"{archive.name}: unsafe member path {name!r}")
            zf.extractall(into)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DownloadError(f"{archive.name}: not a valid zip archive ({exc}); "
                            f"it was removed, run again to download it afresh") from None


# ---------------------------------------------------------------------------------------------------
# MRPC
# ---------------------------------------------------------------------------------------------------

def _text_lines(path: Path) -> list[str]:
    """A text file's lines without line endings (any of LF, CRLF)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DownloadError(f"{path}: not UTF-8 ({exc.reason})") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _mrpc_fields(path: Path, lineno: int, line: str) -> list[str]:
    fields = line.strip().split("\t")
    if len(fields) != 5:
        raise DownloadError(f"{path}:{lineno}: expected 5 tab-separated fields, got {len(fields)}")
    return fields


def build_mrpc(mrpc_dir: Path) -> None:
    """Write MRPC's train.tsv, dev.tsv and test.tsv from the msr_paraphrase files and dev_ids.tsv in ``mrpc_dir``.

    train/dev keep the msr train file's header line (with its byte-order mark); a row goes to dev when its
    (#1 ID, #2 ID) pair is listed in dev_ids.tsv. test.tsv numbers the msr test rows from 0, without labels.
    """
    train_src = mrpc_dir / "msr_paraphrase_train.txt"
    test_src = mrpc_dir / "msr_paraphrase_test.txt"
    ids_src = mrpc_dir / "dev_ids.tsv"
    dev_ids = {tuple(line.strip().split("\t")) for line in _text_lines(ids_src) if line.strip()}
    train_lines = _text_lines(train_src)
    if not train_lines:
        raise DownloadError(f"{train_src}: file is empty")
    header = train_lines[0]
    train_out, dev_out = [header], [header]
    for lineno, line in enumerate(train_lines[1:], start=2):
        fields = _mrpc_fields(train_src, lineno, line)
        (dev_out if (fields[1], fields[2]) in dev_ids else train_out).append("\t".join(fields))
    test_out = [MRPC_TEST_HEADER]
    for n, line in enumerate(_text_lines(test_src)[1:]):
        _, id1, id2, s1, s2 = _mrpc_fields(test_src, n + 2, line)
        test_out.append(f"{n}\t{id1}\t{id2}\t{s1}\t{s2}")
    if len(dev_out) - 1 != len(dev_ids):
        raise DownloadError(f"{ids_src}: {len(dev_ids)} dev pairs but {len(dev_out) - 1} found in {train_src.name}")
    for name, lines in (("train.tsv", train_out), ("dev.tsv", dev_out), ("test.tsv", test_out)):
        atomic.write_bytes(mrpc_dir / name, ("\n".join(lines) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------------
# One task
# ---------------------------------------------------------------------------------------------------

def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def download_task(task: TaskDef, data_dir: str | Path, base_url: str = DEFAULT_BASE_URL, retries: int = 3,
                  backoff: float = 1.0, timeout: float = 60.0) -> bool:
    """Download, check and install one task; False when it was already present and valid (skipped)."""
    data_dir = Path(data_dir)
    if task.name not in SOURCES:
        raise ConfigError(f"task {task.name!r} has no known download; downloadable: {', '.join(SOURCES)}")
    if is_task_present(data_dir, task):
        logger.info("%s: already in %s, skipping", task.name, data_dir / task.data_dir)
        return False
    final = data_dir / task.data_dir
    if final.exists():
        raise DownloadError(f"{final} exists but is not a complete copy of {task.name}; move it away and run again")
    source = SOURCES[task.name]
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".tmp-{task.data_dir}"
    _remove(tmp)
    downloads = [data_dir / PurePosixPath(p).name for p in source.paths]
    for path, dest in zip(source.paths, downloads):
        if dest.is_file():
            logger.info("%s: using %s from an earlier run", task.name, dest)
            continue
        logger.info("%s: downloading %s", task.name, path)
        fetch(f"{base_url.rstrip('/')}/{path}", dest, retries=retries, backoff=backoff, timeout=timeout)
    try:
        root = tmp / task.data_dir
        if source.kind == "zip":
            _unzip(downloads[0], tmp)
            if not root.is_dir():
                found = sorted(p.name for p in tmp.iterdir())
                raise DownloadError(f"{downloads[0].name}: unpacks to {found}, expected a folder {task.data_dir}/")
        else:
            root.mkdir(parents=True)
            if source.kind == "tsv":
                (split,) = task.splits.values()
                os.replace(downloads[0], root / split.file)
            else:
                os.replace(downloads[0], root / "msr_paraphrase_train.txt")
                os.replace(downloads[1], root / "msr_paraphrase_test.txt")
                os.replace(downloads[2], root / "dev_ids.tsv")
                build_mrpc(root)
        check_task_dir(tmp, task)
        atomic.fsync_tree(root)
        os.replace(root, final)
        atomic.fsync_dir(final.parent)
    except Exception:
        for dest in downloads:  # a bad download would fail again: drop it so the next run fetches it afresh
            _remove(dest)
        raise
    finally:
        _remove(tmp)
    for dest in downloads:
        _remove(dest)
    logger.info("%s: installed in %s", task.name, final)
    return True


def resolve_tasks(spec: str, tasks: dict[str, TaskDef]) -> list[TaskDef]:
    """``all`` or a comma-separated list of task names (GLUE's spellings such as SST, STS-B, diagnostic work too)."""
    if spec.strip().lower() == "all":
        return [tasks[n] for n in SOURCES if n in tasks]
    chosen: list[TaskDef] = []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        name = ALIASES.get(raw.lower(), raw.lower())
        if name not in tasks or name not in SOURCES:
            raise ConfigError(f"unknown task {raw!r}; choose all or some of {', '.join(SOURCES)}")
        if tasks[name] not in chosen:
            chosen.append(tasks[name])
    if not chosen:
        raise ConfigError(f"no task given; choose all or some of {', '.join(SOURCES)}")
    return chosen


def download_tasks(names: str, data_dir: str | Path, tasks: dict[str, TaskDef] | None = None,
                   base_url: str = DEFAULT_BASE_URL, retries: int = 3, backoff: float = 1.0,
                   timeout: float = 60.0) -> list[str]:
    """Download the named tasks (see :func:`resolve_tasks`); returns the names actually downloaded.

    ``tasks`` (default: the packaged task definitions) says which files and row counts to expect.
    """
    tasks = load_task_defs() if tasks is None else tasks
    done = []
    for task in resolve_tasks(names, tasks):
        if download_task(task, data_dir, base_url=base_url, retries=retries, backoff=backoff, timeout=timeout):
            done.append(task.name)
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_utils.download_glue",
                                     description="Download the official GLUE data.")
    parser.add_argument("--tasks", default="all", help="all, or a comma-separated list (cola,sst,mrpc,stsb,"
                                                       "qqp,mnli,qnli,rte,wnli,ax)")
    parser.add_argument("--data_dir", required=True, help="GLUE data folder to fill")
    parser.add_argument("--base_url", default=DEFAULT_BASE_URL, help=f"server prefix (default {DEFAULT_BASE_URL})")
    parser.add_argument("--retries", type=int, default=3, help="retries after a connection error or HTTP 5xx")
    parser.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles)")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    parser.add_argument("--task_def", action="append", default=[], metavar="FILE",
                        help="extra task definition YAML (adds or overrides tasks, e.g. other row counts)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.retries < 0:
            raise ConfigError("--retries must be >= 0")
        done = download_tasks(args.tasks, args.data_dir, tasks=load_task_defs(args.task_def),
                              base_url=args.base_url, retries=args.retries, backoff=args.backoff,
                              timeout=args.timeout)
    except (DownloadError, ConfigError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done: downloaded {', '.join(done) if done else 'nothing (all present)'} into {args.data_dir}")
    return 0


def cli() -> None:
    """Console-script entry point (``mt-dnn-download-glue``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
