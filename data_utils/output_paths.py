"""Where a command writes, checked before it does any work, and a prediction file's stream.

- :func:`check_writable_folder`: a folder a command writes in (made when missing) must take a new file. It is
  tried, not guessed from permission bits (root may write anywhere but on a read-only mount or in ``/sys``), so
  a read-only place is a one-line error before anything is predicted or trained.
- :func:`check_output_file`: ``--output`` names a file, not a folder, and not a file the command reads (its
  input, the model's files, the run's config, the task definitions): the output would destroy it.
- :func:`open_output`: the output file, written atomically (:func:`data_utils.atomic.atomic_open`: a symlink
  is written through, a device or a pipe written into); ``-`` and a path to this process's own stdout
  (``/dev/stdout`` when stdout is a file: replacing that file would lose what the process prints after) are
  written into stdout.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

from data_utils import atomic
from data_utils.task_def import ConfigError

STDOUT = "-"


def check_writable_folder(folder: str | Path, what: str) -> None:
    """Raise :class:`ConfigError` unless ``folder`` (or, when it does not exist yet, the nearest folder above it,
    where it will be made) takes a new file; ``what`` starts the message (the flag and its value)."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=".write-check-")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {existing} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


def is_stdout(path: str | Path) -> bool:
    """``-``, or a path to the file this process's stdout (fd 1) is (``/dev/stdout``, ``/dev/fd/1``)."""
    if str(path) == STDOUT:
        return True
    try:
        a, b = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_output_file(path: str | Path, reads: Iterable[tuple[str, Path]], flag: str = "--output") -> None:
    """Refuse, before any work, an output file that is a folder, cannot be written, or is one of ``reads``
    (``(what it is, path)`` of every file the command reads; a symlink or hard link to one counts as it)."""
    if is_stdout(path):
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a folder; give a file name")
    if p.exists():
        for what, read in reads:
            if read.exists() and os.path.samefile(p, read):
                raise ConfigError(f"{flag} {p}: is {what} {read}, which the run reads; writing there would "
                                  f"destroy it (give another file)")
        if not p.is_file():
            return  # a device or a pipe: written into, nothing is made beside it
    target = Path(os.path.realpath(p)) if p.is_symlink() else p  # the file a symlink points to is replaced
    check_writable_folder(target.parent, f"{flag} {p}")


@contextlib.contextmanager
def open_output(path: str | Path) -> Iterator[IO[str]]:
    """A text stream (UTF-8, LF) for a command's output file: stdout for ``-`` and this process's own stdout,
    else :func:`data_utils.atomic.atomic_open` (the file appears whole when the block ends without an error). A
    pipe whose reader quits before the end is a :class:`ConfigError` (stdout piped into ``head`` is left to the
    command's quiet exit)."""
    if not is_stdout(path):
        try:
            with atomic.atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
                yield f
        except BrokenPipeError:  # a pipe or process substitution whose reader quit: never a quiet exit 0
            raise ConfigError(f"{path}: the program reading it closed it before the end (broken pipe); the output "
                              "is incomplete") from None
        return
    sys.stdout.flush()
    raw = getattr(sys.stdout, "buffer", None)
    if raw is None:  # a stdout replaced by a text-only stream
        yield sys.stdout
        return
    stream = io.TextIOWrapper(raw, encoding="utf-8", newline="\n", write_through=True)
    try:
        yield stream
    finally:
        stream.flush()
        stream.detach()  # stdout stays open
