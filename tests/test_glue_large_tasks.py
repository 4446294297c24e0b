"""MNLI, QQP, QNLI and AX on files in the exact layouts of the official ones (tests/glue_fixtures.py): each is
read, tokenized, trained for two steps on a tiny encoder, predicted and written into a submission.

The expected rows are read back from the fixture files with the csv module (not the project's readers), and the
submitted predictions of QQP and AX are recomputed with the independent forward (tests/reference_forward.py).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging

import pytest
import torch

from data_utils.glue import DataError, read_split
from data_utils.submission import check_submission
from tests.glue_fixtures import LARGE_TASKS, MNLI_LABELS, QQP_BROKEN_ROWS, write_glue

N_TRAIN, N_DEV, N_TEST = 24, 8, 6


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_glue(tmp_path_factory.mktemp("glue_large"), tasks=LARGE_TASKS, n_train=N_TRAIN, n_dev=N_DEV,
                      n_test=N_TEST)


def _rows(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize("split,columns,n", [("train", 12, N_TRAIN), ("dev_matched", 16, N_DEV),
                                             ("dev_mismatched", 16, N_DEV), ("test_matched", 10, N_TEST),
                                             ("test_mismatched", 10, N_TEST)])
def test_mnli_splits_read_sentences_and_the_gold_label(glue, tasks, split, columns, n):
    mnli = tasks["mnli"]
    path = glue / "MNLI" / f"{split}.tsv"
    assert len(path.read_text().splitlines()[0].split("\t")) == columns
    examples = read_split(glue, mnli, mnli.splits[split])
    rows = _rows(path)
    assert len(examples) == len(rows) == n
    assert [(e.text_a, e.text_b) for e in examples] == [(r["sentence1"], r["sentence2"]) for r in rows]
    assert not any(e.text_a.startswith("(") for e in examples)  # a sentence, not one of the parse columns
    if split.startswith("test"):
        assert [e.index for e in examples] == [r["index"] for r in rows] and {e.label for e in examples} == {None}
        return
    # the label is gold_label (label1 dissents on dev rows), as an id in the order of the task's labels
    assert tuple(mnli.labels) == MNLI_LABELS
    assert [e.label for e in examples] == [MNLI_LABELS.index(r["gold_label"]) for r in rows]
    assert {e.label for e in examples} == {0, 1, 2}
    if split.startswith("dev"):
        assert any(r["label1"] != r["gold_label"] for r in rows)


def test_qqp_train_rows_cut_by_a_line_break_stop_or_are_skipped(glue, tasks, caplog):
    qqp = tasks["qqp"]
    path = glue / "QQP" / "train.tsv"
    with pytest.raises(DataError) as err:
        read_split(glue, qqp, qqp.splits["train"])
    assert str(err.value).startswith(f"{path}:4: short row: 5 fields, expected 6")
    with caplog.at_level(logging.WARNING, logger="data_utils.glue"):
        examples = read_split(glue, qqp, qqp.splits["train"], bad_rows="skip")
    assert f"{path}: skipped {2 * QQP_BROKEN_ROWS} malformed row(s) (--bad_rows skip): {path}:4 (short row)" \
        in caplog.text
    whole = [r for r in _rows(path) if r["is_duplicate"] in ("0", "1")]  # csv.DictReader leaves short rows short
    assert [(e.index, e.text_a, e.text_b, e.label) for e in examples] == \
        [(r["id"], r["question1"], r["question2"], int(r["is_duplicate"])) for r in whole]
    assert len(examples) == N_TRAIN
    dev = read_split(glue, qqp, qqp.splits["dev"])
    assert [e.label for e in dev] == [int(r["is_duplicate"]) for r in _rows(glue / "QQP" / "dev.tsv")]
    test = read_split(glue, qqp, qqp.splits["test"], bad_rows="skip")
    assert [e.index for e in test] == [str(i) for i in range(N_TEST)] and test[0].text_a.endswith("?")


def test_qnli_question_first_and_its_labels(glue, tasks):
    qnli = tasks["qnli"]
    for split, n in (("train", N_TRAIN), ("dev", N_DEV), ("test", N_TEST)):
        examples = read_split(glue, qnli, qnli.splits[split])
        rows = _rows(glue / "QNLI" / f"{split}.tsv")
        assert len(examples) == n
        assert [(e.text_a, e.text_b) for e in examples] == [(r["question"], r["sentence"]) for r in rows]
        if split != "test":
            assert [e.label for e in examples] == [["entailment", "not_entailment"].index(r["label"]) for r in rows]


def test_ax_is_one_test_file_predicted_by_the_mnli_head(glue, tasks):
    ax = tasks["ax"]
    assert list(ax.splits) == ["test"] and ax.splits["test"].file == "diagnostic.tsv" and ax.head_name == "mnli"
    examples = read_split(glue, ax, ax.splits["test"])
    rows = _rows(glue / "diagnostic" / "diagnostic.tsv")
    assert [(e.index, e.text_a, e.text_b) for e in examples] == [(r["index"], r["sentence1"], r["sentence2"])
                                                                 for r in rows]


def _reference_predictions(run, task: str, path, text_a: str, text_b: str) -> list[str]:
    """The saved model's label for each row of a test file: tokenizer call, independent forward, argmax."""
    from mt_dnn.model import load_model
    from tests import reference_forward as ref

    model, tokenizer, saved = load_model(run / "best")
    labels = {t.name: t for t in saved}[task if task != "ax" else "mnli"].labels
    rows = _rows(path)
    enc = tokenizer([r[text_a] for r in rows], [r[text_b] for r in rows], truncation="longest_first", max_length=128,
                    padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = ref.logits(model.eval(), {"task": "mnli" if task == "ax" else task, **enc})
    return [labels[i] for i in logits.argmax(-1).tolist()]


def test_train_predict_and_submit_mnli_qqp_qnli_and_ax(tmp_path, glue, tasks, tiny_model_dir, capsys):
    from mt_dnn.predict import main as predict_main
    from mt_dnn.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["--tasks", "mnli,qqp,qnli", "--glue_dir", str(glue), "--model", str(tiny_model_dir),
                       "--output_dir", str(run), "--cache_dir", str(tmp_path / "cache"), "--max_steps", "2",
                       "--batch_size", "8", "--bad_rows", "skip"]) == 0
    dev = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    dev = {(r["task"], r.get("split_name")) for r in dev if r["split"] == "dev"}
    assert {("mnli", "dev_matched"), ("mnli", "dev_mismatched"), ("qqp", "dev"), ("qnli", "dev")} <= dev
    sub = tmp_path / "sub"
    capsys.readouterr()
    # predict validates the zip against the official row counts: the five small fixture files are all it flags
    assert predict_main(["--checkpoint", str(run), "--glue_dir", str(glue), "--submission_dir", str(sub)]) == 1
    files = {"MNLI-m.tsv": ("mnli", "test_matched"), "MNLI-mm.tsv": ("mnli", "test_mismatched"),
             "QQP.tsv": ("qqp", "test"), "QNLI.tsv": ("qnli", "test"), "AX.tsv": ("ax", "test")}
    problems = [x for x in capsys.readouterr().err.splitlines() if x.startswith("PROBLEM: ")]
    assert sorted(problems) == sorted(f"PROBLEM: {name}: {N_TEST} rows, expected {tasks[t].splits[s].rows}"
                                      for name, (t, s) in files.items())
    for name, (task, split) in files.items():
        lines = (sub / name).read_text().splitlines()
        source = _rows(glue / tasks[task].data_dir / tasks[task].splits[split].file)
        assert lines[0] == "index\tprediction"
        assert [x.split("\t")[0] for x in lines[1:]] == [r[tasks[task].index] for r in source], name
        assert {x.split("\t")[1] for x in lines[1:]} <= set(tasks[task].labels), name
    for name, task, a, b in (("QQP.tsv", "qqp", "question1", "question2"), ("AX.tsv", "ax", "sentence1", "sentence2")):
        got = [x.split("\t")[1] for x in (sub / name).read_text().splitlines()[1:]]
        path = glue / tasks[task].data_dir / tasks[task].splits["test"].file
        assert got == _reference_predictions(run, task, path, a, b), name
    # the submission is valid once the four tasks' test files count the fixture's rows (the others: baseline)
    small = {}
    for name, task in tasks.items():
        splits = {k: dataclasses.replace(s, rows=N_TEST) if s.kind == "test" and name in LARGE_TASKS else s
                  for k, s in task.splits.items()}
        small[name] = dataclasses.replace(task, splits=splits)
    assert check_submission(sub / "submission.zip", small, glue) == []
