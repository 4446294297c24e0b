"""Tests of data_utils.glue: the readers of the official GLUE files, on written fixtures and the real data."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from data_utils.glue import DataError, Example, read_split, split_path
from data_utils.task_def import TaskDef
from tests.conftest import real_glue_dir
from tests.glue_fixtures import ALL_TASKS, DATA_DIRS, write_glue

N_TRAIN, N_DEV, N_TEST = 24, 8, 6


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue") / "glue", n_train=N_TRAIN, n_dev=N_DEV, n_test=N_TEST)


def _raw_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8-sig").splitlines()


# ---- every reader on the written fixtures -------------------------------------------------------------------

@pytest.mark.parametrize("task_name", ALL_TASKS)
def test_every_split_reads(glue, tasks, task_name):
    task = tasks[task_name]
    sizes = {"train": N_TRAIN, "dev": N_DEV, "test": N_TEST}
    for split in task.splits.values():
        rows = read_split(glue, task, split)
        assert len(rows) == sizes[split.kind], (task_name, split.name)
        assert all(isinstance(r, Example) for r in rows)
        assert all(r.text_a.endswith(" .") for r in rows)
        if task.input == "pair":
            assert all(isinstance(r.text_b, str) and r.text_b for r in rows)
        else:
            assert all(r.text_b is None for r in rows)
        first_line = 2 if split.header else 1
        assert [r.line for r in rows] == list(range(first_line, first_line + len(rows)))
        if split.kind == "test":
            assert all(r.label is None for r in rows)
            assert [r.index for r in rows] == [str(i) for i in range(len(rows))]
        elif task.type == "regression":
            assert all(isinstance(r.label, float) for r in rows)
        else:
            assert all(isinstance(r.label, int) for r in rows)
            assert {r.label for r in rows} == set(range(len(task.labels)))


def test_rte_labels_are_ids_in_label_order(glue, tasks):
    task = tasks["rte"]
    path = split_path(glue, task, task.splits["train"])
    assert path == glue / "RTE" / "train.tsv"
    rows = read_split(glue, task, task.splits["train"])
    raw = [line.split("\t") for line in _raw_lines(path)[1:]]
    assert [task.labels[r.label] for r in rows] == [fields[3] for fields in raw]
    assert task.labels == ("entailment", "not_entailment")
    assert rows[0].label == 0 and rows[1].label == 1  # fixture: entailment first, then not_entailment
    assert [r.index for r in rows] == [fields[0] for fields in raw]
    assert (rows[0].text_a, rows[0].text_b) == (raw[0][1], raw[0][2])


def test_wnli_labels(glue, tasks):
    task = tasks["wnli"]
    rows = read_split(glue, task, task.splits["dev"])
    raw = [line.split("\t") for line in _raw_lines(glue / "WNLI" / "dev.tsv")[1:]]
    assert [r.label for r in rows] == [int(f[3]) for f in raw]


def test_mrpc_bom_header(glue, tasks):
    task = tasks["mrpc"]
    path = glue / "MRPC" / "train.tsv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    rows = read_split(glue, task, task.splits["train"])
    raw = [line.split("\t") for line in _raw_lines(path)[1:]]
    assert [r.label for r in rows] == [int(f[0]) for f in raw]
    assert [(r.text_a, r.text_b) for r in rows] == [(f[3], f[4]) for f in raw]
    test = read_split(glue, task, task.splits["test"])
    assert [r.index for r in test] == [str(i) for i in range(N_TEST)]


def test_mrpc_without_bom_reads_too(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("mrpc",))
    path = root / "MRPC" / "dev.tsv"
    path.write_bytes(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    assert len(read_split(root, tasks["mrpc"], tasks["mrpc"].splits["dev"])) == N_DEV


def test_stsb_scores_are_floats(glue, tasks):
    task = tasks["stsb"]
    rows = read_split(glue, task, task.splits["dev"])
    raw = [line.split("\t") for line in _raw_lines(glue / "STS-B" / "dev.tsv")[1:]]
    assert len(raw[0]) == 10
    assert [r.label for r in rows] == [float(f[9]) for f in raw]
    assert all(0.0 <= r.label <= 5.0 for r in rows)
    assert [(r.text_a, r.text_b) for r in rows] == [(f[7], f[8]) for f in raw]
    test = read_split(glue, task, task.splits["test"])
    assert len(_raw_lines(glue / "STS-B" / "test.tsv")[0].split("\t")) == 9
    assert all(r.label is None for r in test)


def test_cola_headerless(glue, tasks):
    task = tasks["cola"]
    path = glue / "CoLA" / "train.tsv"
    raw = [line.split("\t") for line in _raw_lines(path)]
    assert len(raw) == N_TRAIN and raw[0][1] in ("0", "1")  # no header line
    rows = read_split(glue, task, task.splits["train"])
    assert [r.label for r in rows] == [int(f[1]) for f in raw]
    assert [r.text_a for r in rows] == [f[3] for f in raw]
    assert [r.line for r in rows] == list(range(1, N_TRAIN + 1))
    assert len({r.index for r in rows}) == N_TRAIN  # numbered by row, no id column
    test = read_split(glue, task, task.splits["test"])
    assert test[0].line == 2 and test[0].index == "0" and test[0].label is None


def test_sst_rows(glue, tasks):
    task = tasks["sst"]
    rows = read_split(glue, task, task.splits["train"])
    raw = [line.split("\t") for line in _raw_lines(glue / "SST-2" / "train.tsv")[1:]]
    assert [(r.text_a, r.label) for r in rows] == [(f[0], int(f[1])) for f in raw]
    assert len({r.index for r in rows}) == N_TRAIN


def test_crlf_line_endings(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = root / "RTE" / "dev.tsv"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    rows = read_split(root, tasks["rte"], tasks["rte"].splits["dev"])
    assert len(rows) == N_DEV and not rows[0].text_b.endswith("\r")


def test_test_split_without_index_column_is_numbered(tmp_path, tasks):
    task = tasks["rte"]
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = root / "RTE" / "test.tsv"
    lines = [line.split("\t", 1)[1] for line in _raw_lines(path)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = read_split(root, task, task.splits["test"])
    assert [r.index for r in rows] == [str(i) for i in range(N_TEST)]


def test_labels_of_test_files_are_ignored(tmp_path, tasks):
    """A test file that carries a label column (some mirrors do) still gives label None."""
    task = tasks["rte"]
    root = write_glue(tmp_path / "g", tasks=("rte",))
    (root / "RTE" / "test.tsv").write_bytes((root / "RTE" / "dev.tsv").read_bytes())
    assert all(r.label is None for r in read_split(root, task, task.splits["test"]))


# ---- bad input ----------------------------------------------------------------------------------------------

def _break(root: Path, rel: str, lineno: int, new_line: str) -> Path:
    path = root / rel
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = new_line
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _error(root: Path, task: TaskDef, split: str) -> str:
    with pytest.raises(DataError) as err:
        read_split(root, task, task.splits[split])
    msg = str(err.value)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


def test_short_row(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = _break(root, "RTE/train.tsv", 5, "3\tonly one sentence here")
    msg = _error(root, tasks["rte"], "train")
    assert f"{path}:5:" in msg and "short row" in msg and "only one sentence here" in msg


def test_long_row(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("sst",))
    path = _break(root, "SST-2/dev.tsv", 4, "a cat .\t1\textra")
    msg = _error(root, tasks["sst"], "dev")
    assert f"{path}:4:" in msg and "long row" in msg and "extra" in msg


def test_headerless_short_row(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("cola",))
    path = _break(root, "CoLA/dev.tsv", 3, "gj04\t1\tthe cat .")
    msg = _error(root, tasks["cola"], "dev")
    assert f"{path}:3:" in msg and "the cat ." in msg


def test_blank_line_in_the_middle(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = _break(root, "RTE/dev.tsv", 3, "")
    assert f"{path}:3:" in _error(root, tasks["rte"], "dev")


def test_unknown_label(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = _break(root, "RTE/dev.tsv", 6, "4\tthe cat .\ta cat .\tentailed")
    msg = _error(root, tasks["rte"], "dev")
    assert f"{path}:6:" in msg and "'entailed'" in msg and "not_entailment" in msg


def test_unknown_label_binary(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("mrpc",))
    path = _break(root, "MRPC/train.tsv", 2, "2\t1\t2\tthe cat .\ta cat .")
    msg = _error(root, tasks["mrpc"], "train")
    assert f"{path}:2:" in msg and "'2'" in msg


@pytest.mark.parametrize("score", ["high", "", "nan"])
def test_non_numeric_score(tmp_path, tasks, score):
    root = write_glue(tmp_path / "g", tasks=("stsb",))
    meta = "7\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone"
    path = _break(root, "STS-B/train.tsv", 9, f"{meta}\tthe cat .\ta cat .\t{score}")
    msg = _error(root, tasks["stsb"], "train")
    assert f"{path}:9:" in msg and repr(score) in msg


def test_missing_file(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    (root / "RTE" / "dev.tsv").unlink()
    msg = _error(root, tasks["rte"], "dev")
    assert str(root / "RTE" / "dev.tsv") in msg and "not found" in msg


def test_missing_task_dir(tmp_path, tasks):
    msg = _error(tmp_path, tasks["wnli"], "train")
    assert str(tmp_path / "WNLI" / "train.tsv") in msg


def test_empty_file(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("sst",))
    (root / "SST-2" / "train.tsv").write_bytes(b"")
    msg = _error(root, tasks["sst"], "train")
    assert str(root / "SST-2" / "train.tsv") in msg and "empty" in msg


def test_header_only(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    (root / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n", encoding="utf-8")
    msg = _error(root, tasks["rte"], "train")
    assert str(root / "RTE" / "train.tsv") in msg and "no data rows" in msg


def test_non_utf8_bytes_line_number(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = root / "RTE" / "train.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b" .", b" caf\xe9 .", 1)  # latin-1 e-acute on line 7
    path.write_bytes(b"\n".join(lines))
    msg = _error(root, tasks["rte"], "train")
    assert f"{path}:7:" in msg and "\\xe9" in msg and "UTF-8" in msg


def test_non_utf8_bytes_on_first_line(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("cola",))
    path = root / "CoLA" / "dev.tsv"
    path.write_bytes(b"\xff" + path.read_bytes())
    assert f"{path}:1:" in _error(root, tasks["cola"], "dev")


def test_wrong_header(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = _break(root, "RTE/dev.tsv", 1, "index\tsentence1\tsentence2\tgold")
    msg = _error(root, tasks["rte"], "dev")
    assert f"{path}:1:" in msg and "'label'" in msg and "gold" in msg


def test_wrong_header_mrpc_text_column(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("mrpc",))
    path = _break(root, "MRPC/dev.tsv", 1, "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\tString 2")
    msg = _error(root, tasks["mrpc"], "dev")
    assert f"{path}:1:" in msg and "'#2 String'" in msg


def test_wrong_header_on_a_test_file(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("stsb",))
    path = _break(root, "STS-B/test.tsv", 1,
                  "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence_2")
    msg = _error(root, tasks["stsb"], "test")
    assert f"{path}:1:" in msg and "'sentence2'" in msg


def test_headerless_columns_lacking_a_field(tmp_path, tasks):
    task = tasks["cola"]
    split = dataclasses.replace(task.splits["train"], columns=("source", "lab", "original_label", "sentence"))
    task = dataclasses.replace(task, splits={**task.splits, "train": split})
    root = write_glue(tmp_path / "g", tasks=("cola",))
    msg = _error(root, task, "train")
    assert "'label'" in msg and str(root / "CoLA" / "train.tsv") in msg


def test_a_directory_instead_of_a_file(tmp_path, tasks):
    (tmp_path / "RTE" / "dev.tsv").mkdir(parents=True)
    assert str(tmp_path / "RTE" / "dev.tsv") in _error(tmp_path, tasks["rte"], "dev")


# ---- the real GLUE files ------------------------------------------------------------------------------------

REAL = real_glue_dir()


@pytest.mark.skipif(REAL is None, reason="the real GLUE files are absent (set GLUE_DIR)")
@pytest.mark.parametrize("task_name", ["cola", "sst", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax"])
def test_real_glue_splits_have_official_row_counts(tasks, task_name):
    """Every official file under GLUE_DIR (a task whose folder is absent is skipped, naming it)."""
    task = tasks[task_name]
    if not (REAL / DATA_DIRS[task_name]).is_dir():
        pytest.skip(f"{REAL / DATA_DIRS[task_name]} is absent")
    for split in task.splits.values():
        rows = read_split(REAL, task, split)
        assert split.rows is not None
        assert len(rows) == split.rows, (task_name, split.name)
        if split.kind == "test":
            assert all(r.label is None for r in rows)
            assert len({r.index for r in rows}) == len(rows)
        else:
            assert all(r.label is not None for r in rows)
            if task.labels:
                assert {r.label for r in rows} == set(range(len(task.labels)))


# ---- numbers, final empty lines, --bad_rows skip ------------------------------------------------------------

STS_META = "7\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone"


@pytest.mark.parametrize("score,message", [
    ("inf", "score is not finite ('inf')"), ("-inf", "score is not finite ('-inf')"),
    ("1e999", "score is not finite ('1e999')"), ("NaN", "score is not a number ('NaN')"),
    ("99", "score '99' is outside task stsb's score_range [0, 5]"),
    ("-0.5", "score '-0.5' is outside task stsb's score_range [0, 5]"),
    ("5.001", "score '5.001' is outside task stsb's score_range [0, 5]"),
])
def test_scores_must_be_finite_and_in_range(tmp_path, tasks, score, message):
    assert tasks["stsb"].score_range == (0.0, 5.0)
    root = write_glue(tmp_path / "g", tasks=("stsb",))
    path = _break(root, "STS-B/dev.tsv", 5, f"{STS_META}\tthe cat .\ta cat .\t{score}")
    msg = _error(root, tasks["stsb"], "dev")
    assert msg.startswith(f"{path}:5: {message}")


@pytest.mark.parametrize("score", ["0", "5", "5.000", "2.5"])
def test_scores_at_the_range_ends_are_fine(tmp_path, tasks, score):
    root = write_glue(tmp_path / "g", tasks=("stsb",))
    _break(root, "STS-B/dev.tsv", 5, f"{STS_META}\tthe cat .\ta cat .\t{score}")
    assert read_split(root, tasks["stsb"], tasks["stsb"].splits["dev"])[3].label == float(score)


def test_a_task_without_score_range_takes_any_finite_score(tmp_path, tasks):
    task = dataclasses.replace(tasks["stsb"], score_range=None)
    root = write_glue(tmp_path / "g", tasks=("stsb",))
    _break(root, "STS-B/dev.tsv", 5, f"{STS_META}\tthe cat .\ta cat .\t99")
    assert read_split(root, task, task.splits["dev"])[3].label == 99.0
    _break(root, "STS-B/dev.tsv", 5, f"{STS_META}\tthe cat .\ta cat .\tinf")
    assert "not finite" in _error(root, task, "dev")


@pytest.mark.parametrize("ending", ["\n", "\n\n", "\r\n", "\r\n\r\n"])
def test_final_empty_lines_are_not_rows(tmp_path, tasks, ending):
    root = write_glue(tmp_path / "g", tasks=("rte", "cola"))
    for rel, task, split in (("RTE/dev.tsv", "rte", "dev"), ("CoLA/train.tsv", "cola", "train")):
        path = root / rel
        path.write_bytes(path.read_bytes().rstrip(b"\n") + ending.encode())
        rows = read_split(root, tasks[task], tasks[task].splits[split])
        assert len(rows) == (N_DEV if split == "dev" else N_TRAIN)


def test_skip_drops_malformed_rows_with_one_warning(tmp_path, tasks, caplog):
    root = write_glue(tmp_path / "g", tasks=("stsb",))
    rel = "STS-B/train.tsv"
    _break(root, rel, 3, "only\tthree\tfields")
    _break(root, rel, 6, f"{STS_META}\tthe cat .\ta cat .\tinf")
    _break(root, rel, 9, f"{STS_META}\tthe cat .\ta cat .\t99")
    path = _break(root, rel, 12, f"{STS_META}\tthe cat .\ta cat .\thigh")
    task = tasks["stsb"]
    with pytest.raises(DataError, match=r"train.tsv:3: short row.*--bad_rows skip drops such rows"):
        read_split(root, task, task.splits["train"])
    with caplog.at_level("WARNING"):
        rows = read_split(root, task, task.splits["train"], bad_rows="skip")
    assert len(rows) == N_TRAIN - 4 and {r.line for r in rows}.isdisjoint({3, 6, 9, 12})
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "\n" not in skipped[0]
    msg = skipped[0]
    assert f"{path}: skipped 4 malformed row(s)" in msg
    # only the first three are named, the rest counted
    assert msg == (f"{path}: skipped 4 malformed row(s) (--bad_rows skip): {path}:3 (short row), {path}:6 (score is "
                   f"not finite), {path}:9 (score 99 outside [0, 5]) and 1 more")


def test_skip_warning_names_three_rows_without_a_remainder(tmp_path, tasks, caplog):
    root = write_glue(tmp_path / "g", tasks=("stsb",))
    rel = "STS-B/train.tsv"
    _break(root, rel, 4, f"{STS_META}\tthe cat .\ta cat .\thigh")
    _break(root, rel, 7, f"{STS_META}\tthe cat .\ta cat .\tNaN")
    path = _break(root, rel, 8, f"{STS_META}\tthe cat .\ta cat .\t2.5\textra")  # 11 fields of 10
    task = tasks["stsb"]
    with caplog.at_level("WARNING"):
        rows = read_split(root, task, task.splits["train"], bad_rows="skip")
    assert len(rows) == N_TRAIN - 3
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"{path}: skipped 3 malformed row(s) (--bad_rows skip): {path}:4 (score is not a number), "
                       f"{path}:7 (score is not a number), {path}:8 (long row)"]


def test_skip_keeps_row_numbers_as_indices(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("cola",))
    _break(root, "CoLA/train.tsv", 2, "gj04\t7\t\tthe cat .")
    rows = read_split(root, tasks["cola"], tasks["cola"].splits["train"], bad_rows="skip")
    assert [r.index for r in rows[:2]] == ["0", "2"] and [r.line for r in rows[:2]] == [1, 3]


def test_skip_of_every_row_is_an_error(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("sst",), n_dev=2)
    _break(root, "SST-2/dev.tsv", 2, "a cat .\t7")
    path = _break(root, "SST-2/dev.tsv", 3, "a dog .")
    with pytest.raises(DataError) as err:
        read_split(root, tasks["sst"], tasks["sst"].splits["dev"], bad_rows="skip")
    assert str(err.value) == f"{path}: no usable rows: all 2 data rows are malformed (first: line 2, unknown label '7')"


def test_test_files_stay_strict_under_skip(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    path = _break(root, "RTE/test.tsv", 3, "1\tonly one sentence")
    with pytest.raises(DataError) as err:
        read_split(root, tasks["rte"], tasks["rte"].splits["test"], bad_rows="skip")
    assert f"{path}:3: short row" in str(err.value) and "--bad_rows" not in str(err.value)


def test_bad_rows_choice_is_checked(glue, tasks):
    from data_utils.task_def import ConfigError

    with pytest.raises(ConfigError, match="--bad_rows 'drop'; choose one of error, skip"):
        read_split(glue, tasks["rte"], tasks["rte"].splits["dev"], bad_rows="drop")


def test_file_digest_counts_data_lines_with_and_without_a_header(tmp_path, tasks):
    """file_digest: sha256 of the bytes, and the data lines after the header (CoLA's train file has none; RTE's
    has one), empty lines at the end not counted; a missing file names its task and split."""
    import hashlib

    from data_utils.glue import file_digest

    root = write_glue(tmp_path / "g", tasks=("cola", "rte"))
    for name in ("cola", "rte"):
        task = tasks[name]
        split = task.splits["train"]
        path = split_path(root, task, split)
        path.write_bytes(path.read_bytes() + b"\n\r\n")  # empty lines at the end: not rows
        raw = path.read_bytes()
        assert file_digest(path, task, split) == (hashlib.sha256(raw).digest(), N_TRAIN), name
    assert not tasks["cola"].splits["train"].header and tasks["rte"].splits["train"].header
    task = tasks["rte"]
    with pytest.raises(DataError) as err:
        file_digest(tmp_path / "nowhere.tsv", task, task.splits["dev"])
    assert str(err.value) == f"{tmp_path / 'nowhere.tsv'}: file not found (task rte, split dev)"
