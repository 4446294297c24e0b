"""Every file the project writes is written whole or not at all.

A file is written to a temporary file in the same folder (``.NAME.tmp.PID.TOKEN.HOST``), flushed and fsynced,
then renamed over its target with ``os.replace`` (one atomic step on POSIX and Windows), and the folder is
fsynced so the rename survives a power cut. A kill at any moment leaves the old file or the new one, never a
mix, and at worst a temporary file, which the next writer of the same target removes once its process is
gone. A folder (a saved model, a checkpoint) is written the same way: into a folder of its own, then swapped in
by renames (:func:`replace_dir`).

Appending to a log (``metrics.jsonl``, ``train.log``) is not a replacement and stays a plain append.

A target that is a symlink is written through (the file it points to is replaced); a target that exists and is
not a regular file (``/dev/stdout``, a pipe) is written straight into, since it cannot be replaced.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import IO, Any, Iterator

TEMP_MARK = ".tmp."  # in every temporary file's name: .NAME.tmp.PID.TOKEN.HOST


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def temp_path(path: Path) -> Path:
    """A new temporary file name beside ``path``, naming this process and host (so a stale one can be told)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}.{secrets.token_hex(4)}.{_host()}")


def is_temp_of(candidate: Path, name: str) -> bool:
    """Whether ``candidate`` is a temporary file of target file ``name`` (see :func:`temp_path`)."""
    return candidate.name.startswith(f".{name}{TEMP_MARK}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(path: Path, only_dead: bool = True) -> list[Path]:
    """Remove the temporary files of ``path`` left by killed writers; returns those removed.

    With ``only_dead`` (the default) only those whose process is gone (on this host) go: a live writer's
    temporary file, or another host's, is left alone. The caller passes ``only_dead=False`` when it knows no
    other writer can exist (it holds the folder's lock).
    """
    removed = []
    host = _host()
    try:
        candidates = [p for p in path.parent.iterdir() if is_temp_of(p, path.name)]
    except OSError:
        return removed
    for p in candidates:
        pid, _, rest = p.name[len(f".{path.name}{TEMP_MARK}"):].partition(".")
        _, _, its_host = rest.partition(".")
        if only_dead and (its_host != host or not pid.isdigit() or _alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Make the fully written file ``tmp`` durable and rename it to ``path`` (same folder)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _target(path: str | Path) -> Path:
    """The file to replace: a symlink's target (written through), else ``path`` itself. A link to a pipe or a
    device (``/dev/fd/63``, ``/dev/stdout``) stays as given: it is opened through the link (its resolved name,
    like ``pipe:[123]``, cannot be opened)."""
    path = Path(path)
    if path.is_symlink() and (path.is_file() or not path.exists()):
        return Path(os.path.realpath(path))
    return path


def _replaceable(path: Path) -> bool:
    return not path.exists() or path.is_file()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that takes a file name (``torch.save``,
    safetensors, zipfile); when the block ends without an error the file becomes ``path``; on an error it
    is removed and ``path`` is untouched. The temporary file exists (empty, with the user's umask) on entry."""
    path = _target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for open()
    try:
        yield tmp
        commit(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO]:
    """``open(path, mode)`` for writing (``w`` or ``wb``), but the file replaces ``path`` only when the block
    ends without an error (flushed, fsynced, renamed)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file (mode 'w' or 'wb'), not {mode!r}")
    binary = mode == "wb"
    target = _target(path)
    if not _replaceable(target):  # a device or a pipe: nothing to replace, write into it
        with open(target, mode, **({} if binary else {"encoding": encoding, "newline": newline})) as f:
            yield f
        return
    with atomic_path(target) as tmp:
        with open(tmp, mode, **({} if binary else {"encoding": encoding, "newline": newline})) as f:
            yield f
            f.flush()


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, data: Any, indent: int | None = 2, **kwargs: Any) -> None:
    """``data`` as JSON (a trailing newline), written atomically."""
    write_text(path, json.dumps(data, indent=indent, **kwargs) + "\n")


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (before a rename publishes it)."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def replace_dir(tmp: Path, final: Path) -> None:
    """Publish the fully written folder ``tmp`` as ``final`` by renames: a kill never leaves a broken ``final``.

    The old ``final`` becomes ``final.old`` first and is removed last; a reader that finds ``final`` missing or
    incomplete uses ``final.old`` (a kill between the two renames leaves only it). Readers that may race a
    replacement read every file from one folder and read again when it changed under them
    (``mt_dnn.saved_model``).
    """
    fsync_tree(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
