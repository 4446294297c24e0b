"""Tests of data_utils.submission: the GLUE submission writer, the validator and its command line."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils.submission import (  # noqa: E402
    HEADER, baseline_rows, check_submission, format_prediction, submission_files, write_submission)
from data_utils.task_def import ConfigError, TaskDef, dump_task_defs  # noqa: E402

GLUE_DIR = Path(os.environ.get("GLUE_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "glue_data")))
OFFICIAL = {"CoLA.tsv": 1063, "SST-2.tsv": 1821, "MRPC.tsv": 1725, "STS-B.tsv": 1379, "QQP.tsv": 390965,
            "MNLI-m.tsv": 9796, "MNLI-mm.tsv": 9847, "QNLI.tsv": 5463, "RTE.tsv": 3000, "WNLI.tsv": 146,
            "AX.tsv": 1104}
SMALL_ROWS = 6


@pytest.fixture(scope="module")
def small_tasks(tasks: dict[str, TaskDef]) -> dict[str, TaskDef]:
    """The GLUE tasks with every test split cut to SMALL_ROWS rows (keeps the validator tests fast)."""
    out = {}
    for name, task in tasks.items():
        splits = {k: dataclasses.replace(s, rows=SMALL_ROWS) if s.kind == "test" else s
                  for k, s in task.splits.items()}
        out[name] = dataclasses.replace(task, splits=splits)
    return out


@pytest.fixture(scope="module")
def valid_members(small_tasks: dict[str, TaskDef]) -> dict[str, bytes]:
    """A valid small submission, file name -> bytes (varied predictions, not only the baseline)."""
    members = {}
    for name, (task, split) in submission_files(small_tasks).items():
        if task.labels:
            preds = [format_prediction(task, i % len(task.labels)) for i in range(SMALL_ROWS)]
        else:
            preds = [format_prediction(task, 5.0 * i / (SMALL_ROWS - 1)) for i in range(SMALL_ROWS)]
        lines = [HEADER] + [f"{i}\t{p}" for i, p in enumerate(preds)]
        members[name] = ("\n".join(lines) + "\n").encode()
    return members


def make_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


# ----------------------------------------------------------------------------------------------- writer

def test_submission_files_are_the_eleven_official_ones(tasks):
    files = submission_files(tasks)
    assert list(files) == list(OFFICIAL)
    assert {name: split.rows for name, (_, split) in files.items()} == OFFICIAL
    assert files["AX.tsv"][0].name == "ax" and files["MNLI-mm.tsv"][1].name == "test_mismatched"


def test_format_prediction(tasks):
    stsb, mnli, cola, qnli = tasks["stsb"], tasks["mnli"], tasks["cola"], tasks["qnli"]
    assert format_prediction(stsb, 2.71828) == "2.718"
    assert format_prediction(stsb, 5.6) == "5.000"
    assert format_prediction(stsb, -1.2) == "0.000"
    assert format_prediction(stsb, -0.0) == "0.000"
    assert format_prediction(stsb, 3) == "3.000"
    assert format_prediction(mnli, 0) == "contradiction"
    assert format_prediction(mnli, 2) == "neutral"
    assert format_prediction(qnli, 1) == "not_entailment"
    assert format_prediction(cola, 1) == "1"
    assert format_prediction(cola, "0") == "0"
    np = pytest.importorskip("numpy")
    assert format_prediction(mnli, np.int64(1)) == "entailment"
    assert format_prediction(stsb, np.float32(4.25)) == "4.250"
    for bad_task, bad in ((mnli, 3), (mnli, -1), (mnli, True), (mnli, 1.0), (mnli, "yes"),
                          (stsb, float("nan")), (stsb, float("inf")), (stsb, "high")):
        with pytest.raises(ValueError):
            format_prediction(bad_task, bad)


def test_baseline_rows_without_test_files(tasks, tmp_path):
    rows = baseline_rows(tasks["stsb"], tasks["stsb"].splits["test"], glue_dir=tmp_path)
    assert len(rows) == 1379 and rows[0] == ("0", "2.701") and rows[-1] == ("1378", "2.701")
    rows = baseline_rows(tasks["mnli"], tasks["mnli"].splits["test_mismatched"])
    assert len(rows) == 9847 and {p for _, p in rows} == {"entailment"}


@pytest.mark.skipif(not (GLUE_DIR / "CoLA" / "test.tsv").is_file(), reason=f"no GLUE CoLA test file in {GLUE_DIR}")
def test_baseline_rows_take_real_indices(tasks):
    rows = baseline_rows(tasks["cola"], tasks["cola"].splits["test"], glue_dir=GLUE_DIR)
    assert len(rows) == 1063 and rows[:2] == [("0", "1"), ("1", "1")]


def test_write_submission_files_zip_and_order(small_tasks, tmp_path):
    rows = {}
    for name, (task, split) in submission_files(small_tasks).items():
        value = 7.25 if task.type == "regression" else len(task.labels) - 1
        rows[name] = [(str(i), format_prediction(task, value)) for i in reversed(range(SMALL_ROWS))]
    zip_path = write_submission(tmp_path / "out", rows, tasks=small_tasks)
    assert zip_path == tmp_path / "out" / "submission.zip"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(list(OFFICIAL) + ["submission.zip"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == list(OFFICIAL)  # flat, task-definition order
        for name in OFFICIAL:
            assert zf.read(name) == (tmp_path / "out" / name).read_bytes()
    sts = (tmp_path / "out" / "STS-B.tsv").read_text().split("\n")
    assert sts[0] == "index\tprediction" and sts[1] == f"{SMALL_ROWS - 1}\t5.000" and sts[-1] == ""
    mnli = (tmp_path / "out" / "MNLI-m.tsv").read_bytes().decode().splitlines()
    assert mnli[1:] == [f"{i}\tneutral" for i in reversed(range(SMALL_ROWS))]
    assert (tmp_path / "out" / "QNLI.tsv").read_text().splitlines()[1] == f"{SMALL_ROWS - 1}\tnot_entailment"
    assert b"\r" not in (tmp_path / "out" / "CoLA.tsv").read_bytes()
    assert check_submission(zip_path, small_tasks) == []


def test_write_full_baseline_submission_is_valid(tasks, tmp_path):
    rows = {name: baseline_rows(task, split) for name, (task, split) in submission_files(tasks).items()}
    zip_path = write_submission(tmp_path, rows, zip_name="glue.zip")
    assert check_submission(zip_path, tasks) == []
    with zipfile.ZipFile(zip_path) as zf:
        assert {n: zf.read(n).count(b"\n") - 1 for n in zf.namelist()} == OFFICIAL


@pytest.mark.parametrize("case", ["missing_file", "extra_file", "tab_in_prediction", "bad_row"])
def test_write_submission_is_atomic(small_tasks, valid_members, tmp_path, case):
    rows = {n: [tuple(line.split("\t")) for line in data.decode().splitlines()[1:]]
            for n, data in valid_members.items()}
    if case == "missing_file":
        del rows["WNLI.tsv"]
    elif case == "extra_file":
        rows["SNLI.tsv"] = [("0", "1")]
    elif case == "tab_in_prediction":
        rows["AX.tsv"][3] = ("3", "entail\tment")  # AX is written last: the other files are done by then
    else:
        rows["AX.tsv"][3] = ("3",)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        write_submission(out, rows, tasks=small_tasks)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(ConfigError):
        write_submission(tmp_path / "new", {}, tasks=small_tasks)
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------------------------- validator

def test_valid_small_submission_passes(small_tasks, valid_members, tmp_path):
    path = make_zip(tmp_path / "ok.zip", list(valid_members.items()))
    assert check_submission(path, small_tasks) == []


def _replace(name: str, old: bytes, new: bytes) -> Callable[[dict[str, bytes]], list[tuple[str, bytes]]]:
    def mutate(members: dict[str, bytes]) -> list[tuple[str, bytes]]:
        assert old in members[name]
        return [(n, d.replace(old, new, 1) if n == name else d) for n, d in members.items()]
    return mutate


def _set(name: str, data: bytes | None, rename: str | None = None):
    def mutate(members: dict[str, bytes]) -> list[tuple[str, bytes]]:
        out = []
        for n, d in members.items():
            if n != name:
                out.append((n, d))
            elif data is not None or rename:
                out.append((rename or n, d if data is None else data))
        return out
    return mutate


MALFORMED = {
    "missing_file": (_set("QQP.tsv", None), "QQP.tsv: missing"),
    "extra_file": (lambda m: list(m.items()) + [("README.txt", b"hi\n")], "unexpected file 'README.txt'"),
    "nested_path": (_set("CoLA.tsv", None, rename="submission/CoLA.tsv"), "nested path 'submission/CoLA.tsv'"),
    "duplicate_member": (lambda m: list(m.items()) + [("RTE.tsv", m["RTE.tsv"])], "RTE.tsv appears more than once"),
    "wrong_header": (_replace("SST-2.tsv", b"index\tprediction", b"id\tlabel"), "SST-2.tsv: header is 'id\\tlabel'"),
    "header_missing": (_replace("SST-2.tsv", b"index\tprediction\n", b""), "SST-2.tsv: header is '0\\t0'"),
    "too_few_rows": (_replace("MRPC.tsv", f"{SMALL_ROWS - 1}\t1\n".encode(), b""),
                     f"MRPC.tsv: {SMALL_ROWS - 1} rows, expected {SMALL_ROWS}"),
    "too_many_rows": (_replace("MRPC.tsv", b"\n0\t0\n", f"\n0\t0\n{SMALL_ROWS}\t0\n".encode()),
                      f"MRPC.tsv: {SMALL_ROWS + 1} rows, expected {SMALL_ROWS}"),
    "duplicate_index": (_replace("WNLI.tsv", b"\n2\t0\n", b"\n1\t0\n"), "WNLI.tsv: 1 duplicate index(es): '1'"),
    "label_not_in_vocab": (_replace("MNLI-m.tsv", b"0\tcontradiction", b"0\t0"),
                           "MNLI-m.tsv: 1 label(s) not in contradiction, entailment, neutral: line 2: '0'"),
    "label_case": (_replace("QNLI.tsv", b"0\tentailment", b"0\tEntailment"), "QNLI.tsv: 1 label(s) not in"),
    "cola_label_word": (_replace("CoLA.tsv", b"0\t0", b"0\tunacceptable"), "CoLA.tsv: 1 label(s) not in 0, 1"),
    "stsb_not_float": (_replace("STS-B.tsv", b"0\t0.000", b"0\tfive"), "STS-B.tsv: 1 score(s) not a number"),
    "stsb_underscore": (_replace("STS-B.tsv", b"0\t0.000", b"0\t1_0"), "STS-B.tsv: 1 score(s) not a number"),
    "stsb_padded": (_replace("STS-B.tsv", b"0\t0.000", b"0\t 1.0"), "STS-B.tsv: 1 score(s) not a number"),
    "stsb_nan": (_replace("STS-B.tsv", b"0\t0.000", b"0\tnan"), "STS-B.tsv: 1 score(s) not finite"),
    "stsb_inf": (_replace("STS-B.tsv", b"0\t0.000", b"0\tinf"), "STS-B.tsv: 1 score(s) not finite"),
    "stsb_above": (_replace("STS-B.tsv", b"\t5.000", b"\t5.001"), "STS-B.tsv: 1 score(s) outside [0, 5]"),
    "stsb_below": (_replace("STS-B.tsv", b"0\t0.000", b"0\t-0.5"), "STS-B.tsv: 1 score(s) outside [0, 5]"),
    "empty_file": (_set("AX.tsv", b""), "AX.tsv: empty file"),
    "crlf": (lambda m: [(n, d.replace(b"\n", b"\r\n") if n == "RTE.tsv" else d) for n, d in m.items()],
             "RTE.tsv: CR or CRLF line endings"),
    "not_utf8": (_replace("SST-2.tsv", b"0\t0", b"0\t\xff\xfe"), "SST-2.tsv: not UTF-8 (line 2"),
    "byte_order_mark": (lambda m: [(n, b"\xef\xbb\xbf" + d if n == "CoLA.tsv" else d) for n, d in m.items()],
                        "CoLA.tsv: starts with a byte-order mark"),
    "row_without_tab": (_replace("WNLI.tsv", b"\n3\t1\n", b"\n3 1\n"), "WNLI.tsv: 1 row(s) are not 'index<TAB>prediction'"),
    "row_with_three_fields": (_replace("WNLI.tsv", b"\n3\t1\n", b"\n3\t1\t0.9\n"), "WNLI.tsv: 1 row(s) are not"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_validator_catches(kind, small_tasks, valid_members, tmp_path):
    mutate, expected = MALFORMED[kind]
    path = make_zip(tmp_path / "bad.zip", mutate(valid_members))
    problems = check_submission(path, small_tasks)
    assert problems, f"{kind} not caught"
    assert any(expected in p for p in problems), problems
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize("kind", ["text_file", "truncated", "crc_error", "no_such_file", "empty_bytes"])
def test_validator_catches_broken_zip(kind, small_tasks, valid_members, tmp_path):
    path = tmp_path / "sub.zip"
    if kind == "text_file":
        path.write_text("index\tprediction\n0\t1\n")
    elif kind == "empty_bytes":
        path.write_bytes(b"")
    elif kind in ("truncated", "crc_error"):
        make_zip(path, list(valid_members.items()), compression=zipfile.ZIP_STORED)
        data = bytearray(path.read_bytes())
        if kind == "truncated":
            data = data[: len(data) // 2]
        else:
            at = data.index(b"0\tcontradiction")
            data[at] = ord("1")  # same length, wrong CRC
        path.write_bytes(bytes(data))
    expected = {"text_file": "not a readable zip", "empty_bytes": "not a readable zip",
                "truncated": "not a readable zip", "crc_error": "corrupt zip (member MNLI-m.tsv",
                "no_such_file": "no such file"}[kind]
    problems = check_submission(path, small_tasks)
    assert len(problems) == 1 and expected in problems[0], problems


needs_glue = pytest.mark.skipif(not (GLUE_DIR / "CoLA" / "test.tsv").is_file(),
                                reason=f"real GLUE test files not found in {GLUE_DIR} (set GLUE_DIR)")


@pytest.fixture(scope="module")
def real_members(tasks) -> dict[str, bytes]:
    """A full-size baseline submission whose indices come from the real test files (where present)."""
    out = {}
    for name, (task, split) in submission_files(tasks).items():
        rows = baseline_rows(task, split, GLUE_DIR)
        out[name] = ("\n".join([HEADER] + [f"{i}\t{p}" for i, p in rows]) + "\n").encode()
    return out


@needs_glue
def test_real_test_file_indices_pass(tasks, real_members, tmp_path):
    path = make_zip(tmp_path / "real.zip", list(real_members.items()))
    assert check_submission(path, tasks, glue_dir=GLUE_DIR) == []


@needs_glue
@pytest.mark.parametrize("kind", ["unknown_id", "order"])
def test_real_test_file_indices_are_compared(kind, tasks, real_members, tmp_path):
    members = dict(real_members)
    lines = members["CoLA.tsv"].decode().split("\n")
    if kind == "unknown_id":
        lines[6] = "100000\t1"  # id 5 replaced by one the test file does not have
        expected = "CoLA.tsv: indices differ from"
    else:
        lines[2], lines[3] = lines[3], lines[2]
        expected = "CoLA.tsv: rows are not in test-file order (line 3 has index '2', the test file has '1')"
    members["CoLA.tsv"] = "\n".join(lines).encode()
    path = make_zip(tmp_path / "real.zip", list(members.items()))
    problems = check_submission(path, tasks, glue_dir=GLUE_DIR)
    assert len(problems) == 1 and expected in problems[0], problems
    if kind == "unknown_id":
        assert "1 test id(s) missing: 5" in problems[0] and "1 id(s) not in the test file: 100000" in problems[0]
    assert check_submission(path, tasks) == []  # without the test files only the count is checked


# ----------------------------------------------------------------------------------------------- command line

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_utils.submission", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def small_yaml(small_tasks, tmp_path) -> Path:
    path = tmp_path / "small_tasks.yml"
    dump_task_defs(small_tasks.values(), path)
    return path


def test_cli_valid_zip_exit_0(small_yaml, valid_members, tmp_path):
    path = make_zip(tmp_path / "ok.zip", list(valid_members.items()))
    result = _cli("--check", str(path), "--task_def", str(small_yaml))
    assert result.returncode == 0, result.stderr
    assert f"OK: {path} is a valid GLUE submission" in result.stdout
    assert "QQP.tsv" in result.stdout and " ok" in result.stdout


def test_cli_invalid_zip_exit_1(small_yaml, valid_members, tmp_path):
    path = make_zip(tmp_path / "bad.zip", _replace("STS-B.tsv", b"0\t0.000", b"0\t9.5")(valid_members))
    result = _cli("--check", str(path), "--task_def", str(small_yaml))
    assert result.returncode == 1
    assert "STS-B.tsv: 1 score(s) outside [0, 5]" in result.stdout and "OK:" not in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_missing_zip_exit_2(tmp_path):
    result = _cli("--check", str(tmp_path / "nope.zip"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.zip'}: no such file"
    assert result.stdout == ""


def test_cli_baseline_then_check(small_yaml, tmp_path):
    result = _cli("--baseline", str(tmp_path / "sub"), "--task_def", str(small_yaml))
    assert result.returncode == 0, result.stderr
    result = _cli("--check", str(tmp_path / "sub" / "submission.zip"), "--task_def", str(small_yaml))
    assert result.returncode == 0 and "OK:" in result.stdout, result.stdout


def test_cli_baseline_that_fails_validation_exits_1(tmp_path):
    """A baseline takes its indices from the test files under --glue_dir; one of another row count than the
    official file (RTE: 6 rows, the official one has 3000) makes a zip the server would refuse: the command
    validates what it wrote and says so, as mt_dnn.predict does."""
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "glue", tasks=("rte",), n_test=6)
    out = tmp_path / "sub"
    result = _cli("--baseline", str(out), "--glue_dir", str(glue))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-2:] == [
        "PROBLEM: RTE.tsv: 6 rows, expected 3000",
        f"error: {out / 'submission.zip'} failed validation (1 problems)"]
    # the warning about the short test file is given once, when the rows are read
    assert result.stderr.count("RTE/test.tsv: 6 rows, the official file has 3000") == 1
    result = _cli("--check", str(out / "submission.zip"), "--glue_dir", str(glue))
    assert result.returncode == 1 and "PROBLEM: RTE.tsv: 6 rows, expected 3000" in result.stdout
