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


def test_one_untimed_warm_up_fills_the_feature_cache_before_the_timed_runs(tmp_path, monkeypatch):
    """The first timed run (``default``) must not be the one that tokenizes RTE: an untimed process does, first,
    with the cache every timed run reads, and the report says so and keeps it out of the timings."""
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "g", tasks=("rte",))
    calls = []

    def fake_run(job, t, work, glue_dir, index):
        calls.append((job, t, index, work))
        return {"job": job, "threads": t, "threads_used": 2, "rc": 0, "wall_s": 1.0, "cpu_s": 1.0, "train_s": 0.5,
                "steps": 2, "load_before": 0.1, "load_after": 0.1}

    monkeypatch.setattr(threads, "run_once", fake_run)
    out = tmp_path / "report.json"
    assert threads.main(["--jobs", "smoke,main", "--threads", "default,1", "--glue_dir", str(glue), "--label", "idle",
                         "--out", str(out)]) == 0
    assert [c[:3] for c in calls] == [("smoke", "default", "warmup"), ("smoke", "default", 0), ("smoke", "1", 0),
                                      ("main", "default", 0), ("main", "1", 0)]
    assert len({c[3] for c in calls}) == 1  # one work folder: the warm-up's cache is the timed runs' cache
    import json

    report = json.loads(out.read_text())
    assert len(report["runs"]) == 4 and all(r["rc"] == 0 for r in report["runs"])
    assert report["cache_warmup"]["job"] == "smoke" and "untimed" in report["cache_warmup"]["note"]
    assert report["summary"]["smoke"]["default"]["runs"] == 1  # the warm-up is not one of the timed runs


def test_the_warm_up_job_reads_every_feature_file_the_timed_jobs_read():
    """The smoke job evaluates (dev features) and trains (train features); the timed jobs read the same task's
    files with the same encoder and length (the feature cache's key): the warm-up's cache has all of theirs."""
    def flag(words, name):
        return words[words.index(name) + 1] if name in words else None

    warm = threads.JOBS[threads.WARMUP_JOB]
    assert "--no_eval" not in warm
    for job in threads.JOBS.values():
        for name in ("--tasks", "--model", "--max_seq_len", "--bad_rows", "--glue_dir"):
            assert flag(job, name) == flag(warm, name), name
