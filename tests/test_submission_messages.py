"""data_utils.submission, piece by piece: the exact problem lines of the validator, the writer's refusals, the
report table of the command line. Every expected line is written out by hand from the format the module's
docstrings describe (counts, line numbers, quoted examples), on small hand-made files."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from data_utils.submission import (
    HEADER, SubmissionWriter, baseline_rows, check_output, check_submission, cli, format_prediction,
    inspect_submission, main, submission_files, write_submission)
from data_utils.task_def import ConfigError, TaskDef, dump_task_defs, load_task_defs

ROWS = 6
OFFICIAL = ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv",
            "RTE.tsv", "WNLI.tsv", "AX.tsv"]


@pytest.fixture(scope="module")
def tasks() -> dict[str, TaskDef]:
    """The GLUE tasks with every test split cut to ROWS rows."""
    out = {}
    for name, task in load_task_defs().items():
        splits = {k: dataclasses.replace(s, rows=ROWS) if s.kind == "test" else s for k, s in task.splits.items()}
        out[name] = dataclasses.replace(task, splits=splits)
    return out


def _member(rows: list[str]) -> bytes:
    return ("\n".join([HEADER] + rows) + "\n").encode()


@pytest.fixture(scope="module")
def members(tasks) -> dict[str, bytes]:
    """A valid submission: each file's baseline label (or score) on rows 0..ROWS-1."""
    out = {}
    for name, (task, _) in submission_files(tasks).items():
        out[name] = _member([f"{i}\t{task.baseline_label}" for i in range(ROWS)])
    return out


def _zip(path: Path, members: dict[str, bytes], **replace: bytes | None) -> Path:
    """``members`` with some files replaced (keyword: the name with ``.tsv`` dropped and ``-`` as ``_``)."""
    changed = {k.replace("_", "-") + ".tsv": v for k, v in replace.items()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            data = changed.get(name, data)
            if data is not None:
                zf.writestr(name, data)
    return path


def _problems(tmp_path, tasks, members, glue_dir=None, **replace) -> list[str]:
    return check_submission(_zip(tmp_path / "sub.zip", members, **replace), tasks, glue_dir)


# ---- which files ------------------------------------------------------------------------------------------

def test_two_test_splits_naming_one_file_are_refused(tasks):
    wnli = tasks["wnli"]
    clash = dataclasses.replace(wnli, splits={**wnli.splits,
                                              "test": dataclasses.replace(wnli.splits["test"], submission="RTE.tsv")})
    with pytest.raises(ConfigError) as err:
        submission_files({"rte": tasks["rte"], "wnli": clash})
    assert str(err.value) == "submission file RTE.tsv is named by both rte/test and wnli/test"


def test_a_test_split_without_a_submission_name_has_no_file(tasks):
    rte = tasks["rte"]
    unnamed = dataclasses.replace(rte, splits={**rte.splits,
                                               "test": dataclasses.replace(rte.splits["test"], submission=None)})
    assert list(submission_files({"rte": unnamed, "wnli": tasks["wnli"]})) == ["WNLI.tsv"]


# ---- one prediction -----------------------------------------------------------------------------------------

def test_format_prediction_messages(tasks):
    mnli, stsb = tasks["mnli"], tasks["stsb"]
    cases = [
        (mnli, "yes", "task mnli: 'yes' is not one of its labels contradiction, entailment, neutral"),
        (mnli, True, "task mnli: a class id must be an int, got True"),
        (mnli, 1.0, "task mnli: a class id must be an int, got 1.0"),
        (mnli, 3, "task mnli: class id 3 outside 0..2"),
        (mnli, -1, "task mnli: class id -1 outside 0..2"),
        (stsb, "high", "task stsb: a score must be a number, got 'high'"),
        (stsb, None, "task stsb: a score must be a number, got None"),
        (stsb, float("nan"), "task stsb: a score must be finite, got nan"),
        (stsb, float("-inf"), "task stsb: a score must be finite, got -inf"),
    ]
    for task, value, message in cases:
        with pytest.raises(ValueError) as err:
            format_prediction(task, value)
        assert str(err.value) == message


def test_format_prediction_class_ids_at_both_ends(tasks):
    assert format_prediction(tasks["mnli"], 0) == "contradiction"  # labels in glue_tasks.yml order
    assert format_prediction(tasks["mnli"], 2) == "neutral"
    assert format_prediction(tasks["rte"], "not_entailment") == "not_entailment"


def test_format_prediction_without_a_score_range(tasks):
    # no clipping: three decimals of the value itself, and a value that rounds to zero is "0.000", never "-0.000"
    free = dataclasses.replace(tasks["stsb"], score_range=None)
    assert format_prediction(free, -7.25) == "-7.250"
    assert format_prediction(free, 12.3456) == "12.346"
    assert format_prediction(free, -0.0004) == "0.000"
    assert format_prediction(tasks["stsb"], 4.9996) == "5.000"  # 5.000 after rounding, inside [0, 5]
    assert format_prediction(tasks["stsb"], 5.0) == "5.000" and format_prediction(tasks["stsb"], 0.0) == "0.000"


def test_baseline_rows_need_a_row_count_or_a_test_file(tasks, tmp_path):
    rte = tasks["rte"]
    split = dataclasses.replace(rte.splits["test"], rows=None)
    with pytest.raises(ConfigError) as err:
        baseline_rows(rte, split, tmp_path)
    assert str(err.value) == "task rte, split test: no row count and no test file to take the indices from"
    # the test file's own ids win over the row count
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\n7\ta\tb\n3\tc\td\n")
    assert baseline_rows(rte, split, tmp_path) == [("7", "entailment"), ("3", "entailment")]
    assert baseline_rows(rte, rte.splits["test"]) == [(str(i), "entailment") for i in range(ROWS)]


# ---- writing ------------------------------------------------------------------------------------------------

def _rows(tasks) -> dict[str, list[tuple[str, str]]]:
    return {name: [(str(i), task.baseline_label) for i in range(ROWS)]
            for name, (task, _) in submission_files(tasks).items()}


def test_zip_names_and_output_folders_are_checked(tmp_path):
    for bad in ("a/b.zip", "a\\b.zip", "sub.tar", "zip"):
        with pytest.raises(ConfigError) as err:
            check_output(tmp_path, bad)
        assert str(err.value) == f"zip name must be a plain *.zip file name, got {bad!r}"
    check_output(tmp_path, "glue.zip")
    check_output(tmp_path / "new" / "deeper", "glue.zip")  # nothing there yet: made when written
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError) as err:
        check_output(tmp_path / "file")
    assert str(err.value) == f"{tmp_path / 'file'}: exists and is not a folder (the submission files go into a folder)"
    with pytest.raises(ConfigError) as err:
        check_output(tmp_path / "file" / "out")
    assert str(err.value) == f"{tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, not a folder"


def test_write_submission_names_missing_and_unexpected_files(tasks, tmp_path):
    rows = _rows(tasks)
    del rows["WNLI.tsv"], rows["CoLA.tsv"]
    rows["SNLI.tsv"] = [("0", "1")]
    with pytest.raises(ConfigError) as err:
        write_submission(tmp_path / "out", rows, tasks=tasks)
    assert str(err.value) == (f"a GLUE submission has exactly the files {', '.join(OFFICIAL)}: "
                              "missing CoLA.tsv, WNLI.tsv; unexpected SNLI.tsv")
    rows = _rows(tasks)
    rows["SNLI.tsv"] = []
    with pytest.raises(ConfigError, match=r"\.tsv: unexpected SNLI\.tsv$"):
        write_submission(tmp_path / "out", rows, tasks=tasks)
    assert not (tmp_path / "out").exists()


def test_writer_refusals_counts_and_folders(tasks, tmp_path):
    out = tmp_path / "a" / "b" / "out"  # neither a nor b exists yet
    with SubmissionWriter(out, "g.zip", tasks=tasks) as w:
        assert "RTE.tsv" not in w
        assert w.add("RTE.tsv", iter([("0", "entailment"), ("1", "not_entailment")])) == 2
        assert w.add("WNLI.tsv", []) == 0
        assert "RTE.tsv" in w and "WNLI.tsv" in w and "CoLA.tsv" not in w
        assert [p.name.startswith(".tmp-submission-") for p in out.iterdir()] == [True]  # inside out, hidden
        for name, message in (("RTE.tsv", "RTE.tsv: written twice"),
                              ("SNLI.tsv", "SNLI.tsv: not a GLUE submission file")):
            with pytest.raises(ConfigError) as err:
                w.add(name, [])
            assert str(err.value) == message
        # the missing names in sorted order
        with pytest.raises(ConfigError, match=r": missing AX\.tsv, CoLA\.tsv, MNLI-m\.tsv, MNLI-mm\.tsv, MRPC\.tsv, "
                                              r"QNLI\.tsv, QQP\.tsv, SST-2\.tsv, STS-B\.tsv$"):
            w.finish()
    # leaving the block removed the temporary folder, and out, a and b, which the writer made for it
    assert list(tmp_path.iterdir()) == []
    w.abort()  # a second abort does nothing


def test_written_files_exact_bytes_and_zip(tasks, tmp_path, caplog):
    rows = _rows(tasks)
    rows["RTE.tsv"] = [("5", "not_entailment"), ("X-1", "entailment")]
    rows["WNLI.tsv"] = iter([])  # any iterable; an empty file is only the header
    with caplog.at_level(logging.INFO, logger="data_utils.submission"):
        path = write_submission(tmp_path / "o", rows, "glue.zip", tasks=tasks)
    assert path == tmp_path / "o" / "glue.zip"
    assert [r.getMessage() for r in caplog.records if r.name == "data_utils.submission"] == [
        f"wrote 11 submission files and {path}"]
    assert (tmp_path / "o" / "RTE.tsv").read_bytes() == b"index\tprediction\n5\tnot_entailment\nX-1\tentailment\n"
    assert (tmp_path / "o" / "WNLI.tsv").read_bytes() == b"index\tprediction\n"
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == OFFICIAL
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
        assert zf.read("RTE.tsv") == (tmp_path / "o" / "RTE.tsv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_an_older_zip_under_another_name_is_named_in_a_warning(tasks, tmp_path, caplog):
    """Predicting again into the same folder under another zip name leaves the first zip, whose rows are not the
    new predictions: the writer says so (and says nothing when the name is the same)."""
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    write_submission(tmp_path / "o", _rows(tasks), "first.zip", tasks=tasks)
    with caplog.at_level(logging.WARNING, logger="data_utils.submission"):
        write_submission(tmp_path / "o", _rows(tasks), "first.zip", tasks=tasks)
    assert not warnings()
    with caplog.at_level(logging.WARNING, logger="data_utils.submission"):
        write_submission(tmp_path / "o", _rows(tasks), "second.zip", tasks=tasks)
    assert warnings() == [
        f"{tmp_path / 'o'} also holds first.zip from an earlier run: not these predictions (upload second.zip)"]


@pytest.mark.parametrize("row,problem", [
    (("3",), "row 1 must be two strings (index, prediction), got ('3',)"),
    (("3", "a", "b"), "row 1 must be two strings (index, prediction), got ('3', 'a', 'b')"),
    (("3", 1), "row 1 must be two strings (index, prediction), got ('3', 1)"),
    ((3, "1"), "row 1 must be two strings (index, prediction), got (3, '1')"),
    (("3", ""), "row 1 has an empty value or a tab/newline in it: ('3', '')"),
    (("", "1"), "row 1 has an empty value or a tab/newline in it: ('', '1')"),
    (("3", "a\tb"), "row 1 has an empty value or a tab/newline in it: ('3', 'a\\tb')"),
    (("3", "a\rb"), "row 1 has an empty value or a tab/newline in it: ('3', 'a\\rb')"),
    (("3\n", "1"), "row 1 has an empty value or a tab/newline in it: ('3\\n', '1')"),
])
def test_a_row_that_would_break_the_format_is_refused(tasks, tmp_path, row, problem):
    # row 0 is fine; the bad row is the second one (row 1, counted from 0)
    with SubmissionWriter(tmp_path / "o", tasks=tasks) as w:
        with pytest.raises(ValueError) as err:
            w.add("CoLA.tsv", [("0", "1"), row])
    assert str(err.value) == f"CoLA.tsv: {problem}"


# ---- checking: one file at a time -------------------------------------------------------------------------

def test_valid_zip_report(tasks, members, tmp_path):
    report = inspect_submission(_zip(tmp_path / "s.zip", members), tasks)
    assert report.problems == [] and list(report.files) == OFFICIAL
    assert all(f.rows == ROWS and f.problems == [] for f in report.files.values())
    report = inspect_submission(_zip(tmp_path / "s.zip", members, QQP=None, CoLA=b""), tasks)
    assert report.files["QQP.tsv"].rows is None and report.files["QQP.tsv"].problems == ["missing from the zip"]
    assert report.files["CoLA.tsv"].rows is None and report.files["CoLA.tsv"].problems == ["empty file"]


def test_problem_lines_quote_three_examples_then_count_the_rest(tasks, members, tmp_path):
    five = _member([f"{i}\t{'x' if i < 5 else '1'}" for i in range(ROWS)])
    three = _member([f"{i}\t{'x' if i < 3 else '1'}" for i in range(ROWS)])
    assert _problems(tmp_path, tasks, members, CoLA=five) == [
        "CoLA.tsv: 5 label(s) not in 0, 1: line 2: 'x', line 3: 'x', line 4: 'x' (and 2 more)"]
    assert _problems(tmp_path, tasks, members, CoLA=three) == [
        "CoLA.tsv: 3 label(s) not in 0, 1: line 2: 'x', line 3: 'x', line 4: 'x'"]
    four = _member([f"{i}\t{'x' if i < 4 else '1'}" for i in range(ROWS)])
    assert _problems(tmp_path, tasks, members, CoLA=four) == [
        "CoLA.tsv: 4 label(s) not in 0, 1: line 2: 'x', line 3: 'x', line 4: 'x' (and 1 more)"]


def test_score_problems_in_one_file(tasks, members, tmp_path):
    # lines 2..7: a word, nan, the two ends of [0, 5] (fine), a value above, inf, a value below
    bad = _member(["0\tfive", "1\tnan", "2\t0", "3\t5", "4\t5.5", "5\tinf", "6\t-1"])
    assert _problems(tmp_path, tasks, members, STS_B=bad) == [
        "STS-B.tsv: 7 rows, expected 6",
        "STS-B.tsv: 1 score(s) not a number: line 2: 'five'",
        "STS-B.tsv: 2 score(s) not finite: line 3: 'nan', line 7: 'inf'",
        "STS-B.tsv: 2 score(s) outside [0, 5]: line 6: '5.5', line 8: '-1'"]
    free = {**tasks, "stsb": dataclasses.replace(tasks["stsb"], score_range=None)}
    assert _problems(tmp_path, free, members, STS_B=_member([f"{i}\t{v}" for i, v in
                                                             enumerate(["-9", "99", "0", "1", "2", "3"])])) == []


def test_file_encoding_and_layout_problems(tasks, members, tmp_path):
    rte = members["RTE.tsv"]
    lines = rte.split(b"\n")
    cases = {
        # an invalid byte on line 3 (the second data row)
        b"\n".join(lines[:2] + [b"1\t\xff\xfeentailment"] + lines[3:]):
            ["not UTF-8 (line 3: bytes b'\\xff\\xfeen')"],
        # one CR, at the end of line 4
        b"\n".join(lines[:3] + [lines[3] + b"\r"] + lines[4:]):
            ["CR or CRLF line endings (first at line 4); use LF only"],
        b"\xef\xbb\xbf" + rte: ["starts with a byte-order mark"],
        # a 70-character header shows its first 60 characters
        b"\n".join([b"h" * 70] + lines[1:]): [f"header is {'h' * 60!r}, expected 'index\\tprediction'"],
        # no final newline: still ROWS rows
        rte.rstrip(b"\n"): [],
        b" \n\n": ["empty file"],
    }
    for data, expect in cases.items():
        assert [p.removeprefix("RTE.tsv: ") for p in _problems(tmp_path, tasks, members, RTE=data)] == expect, data
    # an empty index, and a row without a tab of 45 characters (the first 40 are quoted)
    malformed = b"\n".join(lines[:2] + [b"\t1", b"2 " + b"e" * 43] + lines[4:])
    assert _problems(tmp_path, tasks, members, RTE=malformed) == [
        "RTE.tsv: 2 row(s) are not 'index<TAB>prediction': line 3: '\\t1', line 4: '2 " + "e" * 38 + "'"]


def test_zip_level_problems(tasks, members, tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("notes.txt", b"x")
        zf.writestr("dir\\RTE.tsv", b"x")
    assert check_submission(path, tasks) == [
        f"unexpected file 'notes.txt' (expected only {', '.join(OFFICIAL)})",
        "nested path 'dir\\\\RTE.tsv': files must sit at the top of the zip"]
    assert check_submission(tmp_path / "none.zip", tasks) == [f"{tmp_path / 'none.zip'}: no such file"]


# ---- checking the indices against the test file -----------------------------------------------------------------

@pytest.fixture()
def glue(tmp_path) -> Path:
    """A GLUE folder with only RTE's test file, ids 0..5."""
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "test.tsv").write_text(
        "index\tsentence1\tsentence2\n" + "".join(f"{i}\ta\tb\n" for i in range(ROWS)))
    return tmp_path / "glue"


def _rte(indices) -> bytes:
    return _member([f"{i}\tentailment" for i in indices])


def test_indices_against_the_test_file(tasks, members, tmp_path, glue):
    path = glue / "RTE" / "test.tsv"
    assert _problems(tmp_path, tasks, members, glue, RTE=_rte(range(ROWS))) == []
    # ids missing and unknown ones, each list in numeric order (9 before 10), names after numbers
    assert _problems(tmp_path, tasks, members, glue, RTE=_rte([0, 1, 2, 3, 10, "a7", 9])) == [
        "RTE.tsv: 7 rows, expected 6",
        f"RTE.tsv: indices differ from {path}: 2 test id(s) missing: 4, 5; 3 id(s) not in the test file: 9, 10, a7"]
    assert _problems(tmp_path, tasks, members, glue, RTE=_rte([0, 1, 2, 3, 4, 5, 11])) == [
        "RTE.tsv: 7 rows, expected 6", f"RTE.tsv: indices differ from {path}: 1 id(s) not in the test file: 11"]
    assert _problems(tmp_path, tasks, members, glue, RTE=_rte([0, 1, 2, 3, 4])) == [
        "RTE.tsv: 5 rows, expected 6", f"RTE.tsv: indices differ from {path}: 1 test id(s) missing: 5"]
    # the same ids in another order: the first line that differs (line 4 holds the third row)
    assert _problems(tmp_path, tasks, members, glue, RTE=_rte([0, 1, 3, 2, 4, 5])) == [
        "RTE.tsv: rows are not in test-file order (line 4 has index '3', the test file has '2')"]
    # a repeated id: reported once, and no order problem on top
    assert _problems(tmp_path, tasks, members, glue, RTE=_rte([0, 1, 2, 3, 4, 5, 5])) == [
        "RTE.tsv: 7 rows, expected 6", "RTE.tsv: 1 duplicate index(es): '5' (lines 7 and 8)"]
    assert _problems(tmp_path, tasks, members, glue, RTE=_rte([0, 1, 1, 1, 4, 5])) == [
        "RTE.tsv: 2 duplicate index(es): '1' (lines 3 and 4), '1' (lines 3 and 5)",
        f"RTE.tsv: indices differ from {path}: 2 test id(s) missing: 2, 3"]
    # without the test file only duplicates are looked for
    assert _problems(tmp_path, tasks, members, tmp_path, RTE=_rte([0, 1, 3, 2, 4, 5])) == []


def test_an_unreadable_test_file_is_a_problem_not_a_crash(tasks, members, tmp_path, glue):
    (glue / "RTE" / "test.tsv").write_text("index\tsentence1\n0\ta\n")  # no sentence2 column
    problems = _problems(tmp_path, tasks, members, glue, RTE=_rte(range(ROWS)))
    assert len(problems) == 1
    assert problems[0].startswith("RTE.tsv: cannot compare indices with the test file: ")
    assert "sentence2" in problems[0]


# ---- the command line, in this process ------------------------------------------------------------------------

@pytest.fixture()
def task_yaml(tasks, tmp_path) -> Path:
    path = tmp_path / "tasks.yml"
    dump_task_defs(tasks.values(), path)
    return path


def _table(rows: dict[str, str], status: dict[str, str]) -> list[str]:
    # the table by hand: "file" padded to the longest name (MNLI-mm.tsv, 11 characters), two spaces, rows
    # right-aligned in 7, two spaces, the status
    head = "file" + " " * 7 + "  " + "   rows" + "  status"
    return [head] + [f"{n:<11}  {rows[n]:>7}  {status[n]}" for n in OFFICIAL]


def test_cli_check_report(tasks, members, task_yaml, tmp_path, capsys):
    path = _zip(tmp_path / "s.zip", members)
    assert main(["--check", str(path), "--task_def", str(task_yaml)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == _table({n: "6" for n in OFFICIAL}, {n: "ok" for n in OFFICIAL}) + [
        f"OK: {path} is a valid GLUE submission"]
    assert out[0] == "file            rows  status" and out[1] == "CoLA.tsv" + " " * 11 + "6  ok"

    path = _zip(tmp_path / "s.zip", members, QQP=None, CoLA=_member(["0\tx", "1\ty"]))
    assert main(["--check", str(path), "--task_def", str(task_yaml)]) == 1
    out = capsys.readouterr().out.splitlines()
    rows = {n: "6" for n in OFFICIAL} | {"QQP.tsv": "-", "CoLA.tsv": "2"}
    status = {n: "ok" for n in OFFICIAL} | {"QQP.tsv": "1 problem(s)", "CoLA.tsv": "2 problem(s)"}
    assert out == _table(rows, status) + [
        "PROBLEM: CoLA.tsv: 2 rows, expected 6",
        "PROBLEM: CoLA.tsv: 2 label(s) not in 0, 1: line 2: 'x', line 3: 'y'",
        "PROBLEM: QQP.tsv: missing from the zip",
        f"INVALID: {path} has 3 problem(s)"]


def test_cli_errors_and_baseline(task_yaml, tmp_path, capsys):
    assert main(["--check", str(tmp_path / "no.zip")]) == 2
    err = capsys.readouterr()
    assert err.err == f"error: {tmp_path / 'no.zip'}: no such file\n" and err.out == ""
    assert main(["--check", str(tmp_path / "no.zip"), "--glue_dir", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: --glue_dir {tmp_path / 'nowhere'}: no such folder\n"
    (tmp_path / "taken").write_text("x")
    assert main(["--baseline", str(tmp_path / "taken"), "--task_def", str(task_yaml)]) == 2
    # the last line: loggers that other tests configured may print before it
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {tmp_path / 'taken'}: exists and is not a")

    assert main(["--baseline", str(tmp_path / "sub"), "--task_def", str(task_yaml), "--glue_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'sub' / 'submission.zip'}\n"
    assert (tmp_path / "sub" / "MNLI-mm.tsv").read_text() == "".join(
        ["index\tprediction\n"] + [f"{i}\tentailment\n" for i in range(ROWS)])
    assert (tmp_path / "sub" / "STS-B.tsv").read_text().splitlines()[1] == "0\t2.701"

    with pytest.raises(SystemExit) as code:
        argv, sys.argv = sys.argv, ["mt-dnn-check-submission", "--check", str(tmp_path / "sub" / "submission.zip"),
                                    "--task_def", str(task_yaml)]
        try:
            cli()
        finally:
            sys.argv = argv
    assert code.value.code == 0
    capsys.readouterr()


def test_cli_usage_help_and_argument_errors(capsys):
    # expected: the options, metavars and help sentences as written here (whitespace normalised: argparse wraps
    # to the terminal width)
    with pytest.raises(SystemExit) as code:
        main(["--help"])
    assert code.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for part in ("usage: python -m data_utils.submission [-h] (--check ZIP | --baseline OUT_DIR) "
                 "[--glue_dir GLUE_DIR] [--task_def FILE]",
                 "[--task_def FILE] Check a GLUE test-server submission zip, or write a baseline (majority class) "
                 "one. options:",
                 "--check ZIP validate this submission zip",
                 "--baseline OUT_DIR write a baseline submission (each task's baseline_label) into OUT_DIR",
                 "--glue_dir GLUE_DIR GLUE data folder: test ids are taken from / compared with its test files",
                 "--task_def FILE extra task definition YAML (adds or overrides tasks); may repeat"):
        assert part in text, part
    for argv, error in (([], "one of the arguments --check --baseline is required"),
                        (["--check", "a.zip", "--baseline", "b"],
                         "argument --baseline: not allowed with argument --check")):
        with pytest.raises(SystemExit) as code:
            main(argv)
        assert code.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"python -m data_utils.submission: error: {error}"


def test_cli_task_def_repeats_in_order(tasks, task_yaml, tmp_path, capsys):
    # a second --task_def file replaces rte (2 test rows) and adds a task with a submission file of its own (1
    # row); the first file's tasks stay (6 rows each)
    def with_test(task, **change):
        return dataclasses.replace(task, splits={**task.splits,
                                                 "test": dataclasses.replace(task.splits["test"], **change)})

    override = tmp_path / "rte.yml"
    dump_task_defs([with_test(tasks["rte"], rows=2),
                    dataclasses.replace(with_test(tasks["wnli"], rows=1, submission="EXTRA.tsv"), name="extra")],
                   override)
    assert main(["--baseline", str(tmp_path / "sub"), "--task_def", str(task_yaml), "--task_def", str(override)]) == 0
    capsys.readouterr()
    assert (tmp_path / "sub" / "RTE.tsv").read_text() == "index\tprediction\n0\tentailment\n1\tentailment\n"
    assert (tmp_path / "sub" / "EXTRA.tsv").read_text() == "index\tprediction\n0\t0\n"
    assert len((tmp_path / "sub" / "CoLA.tsv").read_text().splitlines()) == 1 + ROWS
    with zipfile.ZipFile(tmp_path / "sub" / "submission.zip") as zf:
        assert zf.namelist() == OFFICIAL + ["EXTRA.tsv"]


def test_cli_check_compares_with_the_glue_dir(members, task_yaml, tmp_path, glue, capsys):
    path = _zip(tmp_path / "s.zip", members, RTE=_rte([0, 1, 3, 2, 4, 5]))
    assert main(["--check", str(path), "--task_def", str(task_yaml)]) == 0  # without the test file: valid
    capsys.readouterr()
    assert main(["--check", str(path), "--task_def", str(task_yaml), "--glue_dir", str(glue)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["PROBLEM: RTE.tsv: rows are not in test-file order (line 4 has index '3', the test file "
                        "has '2')", f"INVALID: {path} has 1 problem(s)"]


def test_cli_logs_warnings_as_level_name_message(tasks, task_yaml, tmp_path, capsys, monkeypatch):
    # the command line's own log format, on a run where the root logger has no handler yet (pytest adds its own,
    # so they are set aside here): a test file shorter than its task's row count gives one warning line; the
    # baseline written from it (2 RTE rows) then fails the validation that follows the writing: exit 1
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n1\tc\td\n")
    monkeypatch.setattr(logging.root, "handlers", [])
    assert main(["--baseline", str(tmp_path / "sub"), "--task_def", str(task_yaml), "--glue_dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"WARNING data_utils.glue: {tmp_path / 'RTE' / 'test.tsv'}: 2 rows, the official file has 6",
        "PROBLEM: RTE.tsv: 2 rows, expected 6",
        f"error: {tmp_path / 'sub' / 'submission.zip'} failed validation (1 problems)"]


# ---- details: split names, repeated members, line numbers, the writer's folders ---------------------------------

def test_details_of_files_zip_members_and_line_numbers(tasks, members, tmp_path):
    # MNLI without a name for its matched test split: the mismatched one still has its file
    mnli = tasks["mnli"]
    unnamed = dataclasses.replace(mnli, splits={**mnli.splits, "test_matched": dataclasses.replace(
        mnli.splits["test_matched"], submission=None)})
    assert list(submission_files({"mnli": unnamed})) == ["MNLI-mm.tsv"]
    # a repeated member in the middle of the zip: the members after it are still read
    path = tmp_path / "dup.zip"
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
            if name == "CoLA.tsv":
                zf.writestr(name, data)
    assert check_submission(path, tasks) == ["CoLA.tsv appears more than once in the zip"]
    rte = members["RTE.tsv"]
    lines = rte.split(b"\n")
    # CRs at the ends of lines 3 and 5: the first is named
    two = b"\n".join(lines[:2] + [lines[2] + b"\r", lines[3], lines[4] + b"\r"] + lines[5:])
    assert _problems(tmp_path, tasks, members, RTE=two) == [
        "RTE.tsv: CR or CRLF line endings (first at line 3); use LF only"]
    # old Mac line endings (CR only) are read as lines too
    assert _problems(tmp_path, tasks, members, RTE=rte.replace(b"\n", b"\r")) == [
        "RTE.tsv: CR or CRLF line endings (first at line 1); use LF only"]
    # a file that starts with an empty line: line numbers still count it
    assert _problems(tmp_path, tasks, members, RTE=b"\n" + rte.replace(b"0\tentailment", b"0\t\xffx")) == [
        "RTE.tsv: not UTF-8 (line 3: bytes b'\\xffx\\n1')"]


def test_writer_details(tasks, tmp_path, monkeypatch):
    import data_utils.submission as submission_mod

    calls = []
    monkeypatch.setattr(submission_mod, "check_writable_folder", lambda folder, what: calls.append((folder, what)))
    out = tmp_path / "a" / "out"
    check_output(out)
    # the folder must take files (tried on the nearest existing one when it is not there yet): the temporary
    # folder goes inside it
    assert calls == [(out, str(out))]
    with pytest.raises(ConfigError, match="zip name must be a plain"):
        SubmissionWriter(tmp_path / "o", "sub.tar", tasks=tasks)
    rows = _rows(tasks)
    rows["X.tsv"], rows["Y.tsv"] = [], []
    with pytest.raises(ConfigError, match=r": unexpected X\.tsv, Y\.tsv$"):
        write_submission(tmp_path / "o", rows, tasks=tasks)
    with SubmissionWriter(tmp_path / "o", tasks=tasks) as w:
        w.add("RTE.tsv", [("0", "entailment")])
        shutil.rmtree(w.tmp)  # the temporary folder gone already: abort does not fail
        w.abort()
        assert w.tmp is None
        assert w.add("WNLI.tsv", [("0", "1")]) == 1  # a new temporary folder, inside the output
        assert w.tmp.parent == tmp_path / "o"


def test_missing_ids_in_numeric_order(tasks, members, tmp_path):
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "test.tsv").write_text(
        "index\tsentence1\tsentence2\n" + "".join(f"{i}\ta\tb\n" for i in range(12)))
    path = tmp_path / "glue" / "RTE" / "test.tsv"
    got = _problems(tmp_path, tasks, members, tmp_path / "glue", RTE=_rte([0, 1, 2, 3, 4, 5, 6, 7, 8, 11]))
    assert got[-1] == f"RTE.tsv: indices differ from {path}: 2 test id(s) missing: 9, 10"


# ---- where the writer writes: no rename across devices, no folder under a name it writes ---------------------

def test_the_files_are_moved_within_the_output_folder(tasks, tmp_path, monkeypatch):
    """The output folder may be a mount point (``/dev/shm``, a container volume), where a rename from any other
    folder fails (EXDEV): every rename the writer makes stays inside it."""
    import errno
    import os

    out = tmp_path / "mnt"
    out.mkdir()
    real_replace = os.replace

    def replace_on_a_mount(src, dst):
        inside = [out in Path(p).parents for p in (src, dst)]
        if inside[0] != inside[1]:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_on_a_mount)
    path = write_submission(out, _rows(tasks), tasks=tasks)
    assert path == out / "submission.zip"
    assert sorted(p.name for p in out.iterdir()) == sorted(OFFICIAL + ["submission.zip"])  # no .tmp-* left
    assert [p.name for p in tmp_path.iterdir()] == ["mnt"]
    assert check_submission(path, tasks) == []


@pytest.mark.parametrize("name", ["RTE.tsv", "AX.tsv", "submission.zip", "dev_scores.json"])
def test_a_folder_under_a_name_the_writer_writes_is_refused(tasks, tmp_path, name):
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    message = f"{out / name}: exists and is not a file (the submission writes a file of that name there)"
    with pytest.raises(ConfigError) as err:
        check_output(out)  # the packaged task definitions name the files
    assert str(err.value) == message
    with pytest.raises(ConfigError) as err:
        write_submission(out, _rows(tasks), tasks=tasks)
    assert str(err.value) == message
    assert [p.name for p in out.iterdir()] == [name]  # nothing written
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_what_may_stand_under_a_name_the_writer_writes(tasks, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "glue.zip").symlink_to(tmp_path / "elsewhere")  # a link to a folder is refused as the folder is
    with pytest.raises(ConfigError, match=r"/out/glue\.zip: exists and is not a file \("):
        check_output(out, "glue.zip")
    check_output(out, "other.zip")  # another zip name: that link is not in the way
    (out / "glue.zip").unlink()
    # a regular file, a link to one and a dangling link are replaced
    (out / "RTE.tsv").write_text("old\n")
    (tmp_path / "kept.tsv").write_text("kept\n")
    (out / "CoLA.tsv").symlink_to(tmp_path / "kept.tsv")
    (out / "AX.tsv").symlink_to(tmp_path / "nothing")
    write_submission(out, _rows(tasks), "glue.zip", tasks=tasks)
    assert (out / "RTE.tsv").read_text() == "index\tprediction\n" + "".join(f"{i}\tentailment\n" for i in range(ROWS))
    assert not (out / "CoLA.tsv").is_symlink() and not (out / "AX.tsv").is_symlink()
    assert (tmp_path / "kept.tsv").read_text() == "kept\n"
    # a folder named under --zip_name of the writer's tasks: their own file names count, not the packaged ones
    extra = {"extra": dataclasses.replace(tasks["rte"], name="extra", splits={
        "test": dataclasses.replace(tasks["rte"].splits["test"], submission="EXTRA.tsv")})}
    (out / "EXTRA.tsv").mkdir()
    with pytest.raises(ConfigError, match=r"/out/EXTRA\.tsv: exists and is not a file"):
        SubmissionWriter(out, tasks=extra)


def test_a_folder_made_under_a_name_while_writing_is_refused_before_any_move(tasks, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with SubmissionWriter(out, tasks=tasks) as w:
        for name, rows in _rows(tasks).items():
            w.add(name, rows)
        (out / "MRPC.tsv").mkdir()  # after the writer started (check_output passed)
        with pytest.raises(ConfigError) as err:
            w.finish()
    assert str(err.value) == (f"{out / 'MRPC.tsv'}: exists and is not a file (the submission writes a file of that "
                              "name there)")
    assert sorted(p.name for p in out.iterdir()) == ["MRPC.tsv", "keep.txt"]  # no file moved, no temporary folder


def test_a_move_that_fails_is_one_error_naming_the_file(tasks, tmp_path, monkeypatch):
    import errno
    import os

    out = tmp_path / "new" / "out"
    real_replace = os.replace

    def full_at_wnli(src, dst):
        if Path(dst).name == "WNLI.tsv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_at_wnli)
    with pytest.raises(ConfigError) as err:
        write_submission(out, _rows(tasks), tasks=tasks)
    assert str(err.value) == f"{out / 'WNLI.tsv'}: cannot move it into place (No space left on device); " \
                             "submission.zip was not written"
    # the files before WNLI.tsv (task-definition order) were moved; no zip, no temporary folder
    assert sorted(p.name for p in out.iterdir()) == sorted(OFFICIAL[:OFFICIAL.index("WNLI.tsv")])
    monkeypatch.setattr(os, "replace", real_replace)
    assert write_submission(out, _rows(tasks), tasks=tasks) == out / "submission.zip"  # the next try completes
    assert sorted(p.name for p in out.iterdir()) == sorted(OFFICIAL + ["submission.zip"])


def test_a_file_that_cannot_be_written_is_one_error_and_leaves_nothing(tasks, tmp_path, monkeypatch):
    import builtins
    import errno
    import os

    import data_utils.submission as submission

    out = tmp_path / "new" / "out"
    real_open = builtins.open

    def full_at_rte(path, *args, **kwargs):
        if Path(path).name == "RTE.tsv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(submission, "open", full_at_rte, raising=False)
    with pytest.raises(ConfigError) as err:
        write_submission(out, _rows(tasks), tasks=tasks)
    assert str(err.value) == f"{out / 'RTE.tsv'}: cannot write it (No space left on device)"
    assert not (tmp_path / "new").exists()  # the folders the writer made are gone again


# ---- zips the validator must read without a crash -------------------------------------------------------------

def test_a_file_empty_but_for_a_byte_order_mark(tasks, members, tmp_path):
    bom = b"\xef\xbb\xbf"
    assert _problems(tmp_path, tasks, members, AX=bom) == [
        "AX.tsv: starts with a byte-order mark", "AX.tsv: empty file"]
    assert _problems(tmp_path, tasks, members, AX=bom + b"\n \n") == [
        "AX.tsv: starts with a byte-order mark", "AX.tsv: empty file"]
    assert _problems(tmp_path, tasks, members, AX=b"\n") == ["AX.tsv: empty file"]


def _encrypt_flag(path: Path, name: str) -> None:
    """Set the 'encrypted' bit (bit 0 of the general purpose flags) of member ``name`` in both of its headers:
    the local header (signature PK\\3\\4, flags at byte 6, name at byte 30) and the central directory entry
    (signature PK\\1\\2, flags at byte 8, name at byte 46)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.index(signature)
        while data[at + name_at:at + name_at + len(encoded)] != encoded:
            at = data.index(signature, at + 4)
        data[at + flags_at] |= 0x1
    path.write_bytes(bytes(data))


def test_an_encrypted_member_is_a_problem(tasks, members, task_yaml, tmp_path, capsys):
    path = _zip(tmp_path / "s.zip", members)
    _encrypt_flag(path, "AX.tsv")
    with zipfile.ZipFile(path) as zf, pytest.raises(RuntimeError, match="encrypted"):
        zf.read("AX.tsv")  # the zip as a password-protected member reads
    assert check_submission(path, tasks) == ["AX.tsv: encrypted (password-protected): the GLUE server cannot read it"]
    assert main(["--check", str(path), "--task_def", str(task_yaml)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == _table({n: "6" for n in OFFICIAL} | {"AX.tsv": "-"},
                         {n: "ok" for n in OFFICIAL} | {"AX.tsv": "1 problem(s)"}) + [
        "PROBLEM: AX.tsv: encrypted (password-protected): the GLUE server cannot read it",
        f"INVALID: {path} has 1 problem(s)"]
    # an encrypted file the zip should not hold at all is only unexpected
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("notes.txt", b"x")
    _encrypt_flag(path, "notes.txt")
    assert check_submission(path, tasks) == [
        f"unexpected file 'notes.txt' (expected only {', '.join(OFFICIAL)})",
        "AX.tsv: encrypted (password-protected): the GLUE server cannot read it"]


@pytest.mark.skipif(shutil.which("zip") is None, reason="no zip program")
def test_a_zip_made_with_a_password(tasks, members, tmp_path):
    import subprocess

    folder = tmp_path / "files"
    folder.mkdir()
    for name, data in members.items():
        (folder / name).write_bytes(data)
    subprocess.run(["zip", "-q", "-P", "pw", str(tmp_path / "p.zip"), *members], cwd=folder, check=True)
    assert check_submission(tmp_path / "p.zip", tasks) == [
        f"{n}: encrypted (password-protected): the GLUE server cannot read it" for n in OFFICIAL]
