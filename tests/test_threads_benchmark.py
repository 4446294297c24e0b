"""benchmarks.threads: the documented smoke run is the one it times, its summary of hand-made runs, and its flags."""
from __future__ import annotations

import re

import pytest

from benchmarks import threads
from tests.conftest import REPO


def test_the_documented_smoke_run_is_the_one_timed():
    pages = [REPO / "README.md", REPO / "docs" / "getting-started.md"]
    commands = [m.group(0) for page in pages if page.is_file()
                for m in re.finditer(r"python -m mt_dnn\.train [^\n]*--output_dir runs/smoke[^\n]*", page.read_text())]
    assert commands, "no smoke run (--output_dir runs/smoke) in README.md or docs/getting-started.md"
    for command in commands:
        words = command.split()
        del words[words.index("--output_dir"):words.index("--output_dir") + 2]
        assert words[3:] == threads.SMOKE, command


def _run(job, t, wall, rc=0):
    return {"job": job, "threads": t, "threads_used": 2 if t == "default" else int(t), "rc": rc, "wall_s": wall,
            "cpu_s": wall / 2, "train_s": wall / 4}


def test_the_summary_is_the_median_of_the_successful_runs():
    runs = [_run("smoke", "1", 10.0), _run("smoke", "1", 30.0), _run("smoke", "1", 14.0),
            _run("smoke", "default", 50.0), _run("smoke", "default", 1.0, rc=1)]
    summ = threads.summary(runs)
    assert summ["smoke"]["1"] == {"runs": 3, "threads_used": 1, "wall_s": 14.0, "cpu_s": 7.0, "train_s": 3.5}
    assert summ["smoke"]["default"]["runs"] == 1 and summ["smoke"]["default"]["wall_s"] == 50.0
    assert "| smoke | default (2) | 50.0 |" in threads.table(summ, "busy", "3.0-4.0")


@pytest.mark.parametrize("args", [["--jobs", "nope"], ["--threads", "two"], ["--repeats", "0"]])
def test_bad_flags_are_refused_before_any_run(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        threads.main([*args, "--glue_dir", str(tmp_path)])
    assert exc.value.code == 2 and "bad --jobs/--threads/--repeats" in capsys.readouterr().err
