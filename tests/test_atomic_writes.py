"""Every file the project writes is written whole or not at all, through one helper (``data_utils.atomic``)."""
from __future__ import annotations

import os
import re
import stat

import pytest

from data_utils import atomic
from tests.conftest import REPO

# a write that replaces or creates a file in place, or a rename done by hand
WRITES = re.compile(r"(?<!atomic)\.write_(text|bytes)\(|(?<!atomic_)open\([^)]*[\"'][wx]b?[\"']|"
                    r"os\.replace\(|\.rename\(|\.replace\(path\)|savefig\((?!tmp)")
# the writes that are not replacements of a finished file, each with why it needs no helper (appends, mode "a",
# stay appends)
NOT_REPLACEMENTS = {
    ("data_utils/submission.py", 'with open(path, "w"'): "a file of the submission's temporary folder",
    ("data_utils/download_glue.py", "os.replace(downloads["): "moves a finished download into the unpublished "
                                                              "temporary task folder",
    ("data_utils/download_glue.py", "os.replace(root, final)"): "publishes the checked task folder in one rename",
    ("mt_dnn/run_folder.py", 'os.fdopen(fd, "w")'): "the lock, made with O_EXCL (its existence is the lock)",
    ("experiments/rapt/adopt.py", "tmp.rename(run.folder)"): "publishes the adopted copy in one rename",
    ("experiments/rapt/gpu_study.py", '(staging / f"part{i}").rename('): "publishes a written part folder in one "
                                                                         "rename",
}


def _writes():
    for top in ("mt_dnn", "data_utils", "experiments"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "data_utils/atomic.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                code = line.split("#")[0]
                if WRITES.search(code) and not any(rel == f and s in code for f, s in NOT_REPLACEMENTS):
                    yield f"{rel}:{n}: {line.strip()}"


def test_every_file_is_written_through_the_atomic_helper():
    assert list(_writes()) == []


def test_every_listed_exception_is_still_in_the_code():
    assert [key for key in NOT_REPLACEMENTS if key[1] not in (REPO / key[0]).read_text(encoding="utf-8")] == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "config.json"
    atomic.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(path) as f:
            f.write('{"a": ')
            raise RuntimeError("killed half-way")
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_files_get_the_users_umask_and_symlinks_are_written_through(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    real = tmp_path / "real.txt"
    real.write_text("old")
    (tmp_path / "link.txt").symlink_to(real)
    atomic.write_text(tmp_path / "link.txt", "new")
    assert (tmp_path / "link.txt").is_symlink() and real.read_text() == "new"


def test_a_dead_writers_temporary_file_is_removed_by_the_next_writer(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "out.jsonl"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = atomic._host()
    stale = tmp_path / f".out.jsonl.tmp.{dead.stdout.strip()}.0badc0de.{host}"
    live = tmp_path / f".out.jsonl.tmp.{os.getpid()}.0badc0de.{host}"  # a writer still at work: left alone
    other = tmp_path / f".out.jsonl.tmp.{dead.stdout.strip()}.0badc0de.elsewhere"  # another host's
    for p in (stale, live, other):
        p.write_text("half")
    atomic.write_text(path, "whole\n")
    assert path.read_text() == "whole\n"
    assert not stale.exists() and live.exists() and other.exists()
