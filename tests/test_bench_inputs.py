"""benchmarks.predict_speed and benchmarks.scale: a step name or count that does not exist is a one-line error,
before any file is built (the QQP-sized file takes minutes to write)."""
from __future__ import annotations

import pytest

import benchmarks.predict_speed as ps
import benchmarks.scale as scale


@pytest.mark.parametrize("args,message", [
    (["--steps", "submision"], "--steps submision: unknown: submision; choose from submission, own_text"),
    (["--steps", "submission,nope"], "unknown: nope"),
    (["--steps", ","], "no step"),
    (["--reps", "0"], "--reps must be at least 1"),
    (["--rows", "0"], "--rows and --reps must be at least 1"),
])
def test_predict_speed_refuses_bad_flags_before_building(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(ps, "build", lambda *a, **k: pytest.fail("the files were built"))
    monkeypatch.setattr(ps, "pick_test_file", lambda *a, **k: pytest.fail("the GLUE folder was read"))
    with pytest.raises(SystemExit) as exc:
        ps.main([*args, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--steps", "frist_run"], "--steps frist_run: unknown: frist_run; choose from first_run, cached_run"),
    (["--steps", "first_run,predict_qqp_2000"], "unknown: predict_qqp_2000"),
    (["--steps", ""], "no step"),
    (["--qqp_rows", "2k"], "--qqp_rows 2k: not comma-separated row counts"),
    (["--qqp_rows", "0"], "a row count must be at least 1"),
])
def test_scale_refuses_bad_flags_before_building(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(scale, "build_data", lambda *a, **k: pytest.fail("the files were built"))
    with pytest.raises(SystemExit) as exc:
        scale.main([*args, "--work", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()  # no report.json of nothing, exit 0, as an unknown name gave before


def test_scale_without_work_makes_no_temporary_folder_for_a_bad_flag(tmp_path, monkeypatch, capsys):
    made = []
    monkeypatch.setattr(scale.tempfile, "mkdtemp", lambda **k: made.append(k) or str(tmp_path / "t"))
    with pytest.raises(SystemExit):
        scale.main(["--steps", "nope"])
    assert made == [] and "unknown: nope" in capsys.readouterr().err
