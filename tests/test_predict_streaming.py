"""Prediction from flat features in chunks gives exactly what one tokenizer call, per-row tensors and row-by-row
padding gave: the GLUE submission files (class ids and regression scores) and the JSON lines of ``--input``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import data_utils.features as features_mod
import mt_dnn.api as api
from data_utils.features import TRUNCATION
from data_utils.glue import read_split
from data_utils.submission import format_prediction
from mt_dnn.model import find_model_dir, load_model
from mt_dnn.predict import main as predict_main
from mt_dnn.train import main as train_main
from tests.glue_fixtures import write_glue

BATCH = 4
MAX_LEN = 128  # the run's max_seq_len (the default)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("streaming")
    glue = write_glue(root / "glue", tasks=("rte", "stsb"), n_test=37)
    run = root / "run"
    assert train_main(["--tasks", "rte,stsb", "--glue_dir", str(glue), "--model", str(tiny_model_dir),
                       "--output_dir", str(run), "--cache_dir", str(root / "cache"), "--max_steps", "2",
                       "--batch_size", "8", "--no_eval"]) == 0
    return glue, run


@torch.no_grad()
def _reference_logits(model, tokenizer, task, examples) -> np.ndarray:
    """The whole file in one tokenizer call, one tensor per row, stable length-sorted batches padded row by row."""
    enc = tokenizer([e.text_a for e in examples], [e.text_b for e in examples] if task.text_b else None,
                    truncation=TRUNCATION, max_length=MAX_LEN, padding=False, return_token_type_ids=True)
    ids = [torch.tensor(x) for x in enc["input_ids"]]
    types = [torch.tensor(x) for x in enc["token_type_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), task.num_outputs), dtype=np.float32)
    model.eval()
    for k in range(0, len(order), BATCH):
        rows = order[k:k + BATCH]
        longest = max(len(ids[i]) for i in rows)
        batch = {"task": task.name, "input_ids": torch.full((len(rows), longest), tokenizer.pad_token_id),
                 "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long),
                 "token_type_ids": torch.zeros((len(rows), longest), dtype=torch.long)}
        for j, i in enumerate(rows):
            n = len(ids[i])
            batch["input_ids"][j, :n], batch["attention_mask"][j, :n], batch["token_type_ids"][j, :n] = \
                ids[i], 1, types[i]
        out[rows] = model(batch).float().numpy()
    return out


def _model(run):
    model, tokenizer, tasks = load_model(find_model_dir(run))
    return model, tokenizer, {t.name: t for t in tasks}


def test_submission_files_equal_the_per_row_path(trained, tmp_path, monkeypatch):
    glue, run = trained
    monkeypatch.setattr(features_mod, "CHUNK_ROWS", 5)  # several tokenizer chunks per file
    sub = tmp_path / "sub"
    # exit 1: the validator wants the official row counts, the fixture test files are shorter; files are written
    assert predict_main(["--checkpoint", str(run), "--glue_dir", str(glue), "--submission_dir", str(sub),
                         "--eval_batch_size", str(BATCH), "--device", "cpu"]) == 1
    model, tokenizer, tasks = _model(run)
    for name, file in (("rte", "RTE.tsv"), ("stsb", "STS-B.tsv")):
        task = tasks[name]
        examples = read_split(glue, task, task.splits["test"])
        logits = _reference_logits(model, tokenizer, task, examples)
        values = logits[:, 0].astype(np.float64) if task.type == "regression" else logits.argmax(-1)
        want = ["index\tprediction"] + [f"{e.index}\t{format_prediction(task, v)}"
                                        for e, v in zip(examples, values.tolist())]
        got = (sub / file).read_text().splitlines()
        assert got == want and len(got) == 38
        assert len({tuple(row) for row in logits.tolist()}) > 30  # rows differ: padding or order errors would show
        if task.type == "regression":
            assert len({line.split("\t")[1] for line in got[1:]}) > 3  # written scores differ too


def test_own_input_file_equals_the_per_row_path(trained, tmp_path, monkeypatch):
    glue, run = trained
    monkeypatch.setattr(features_mod, "CHUNK_ROWS", 6)
    monkeypatch.setattr(api, "RECORD_CHUNK", 4)  # records made and written a few rows at a time
    model, tokenizer, tasks = _model(run)
    for name in ("rte", "stsb"):
        task = tasks[name]
        examples = read_split(glue, task, task.splits["test"])
        path = tmp_path / f"{name}.tsv"
        path.write_text("id\tsentence1\tsentence2\n" + "".join(f"q{e.index}\t{e.text_a}\t{e.text_b}\n"
                                                                for e in examples))
        out = tmp_path / f"{name}.jsonl"
        assert predict_main(["--checkpoint", str(run), "--task", name, "--input", str(path), "--output", str(out),
                             "--eval_batch_size", str(BATCH), "--device", "cpu"]) == 0
        got = [json.loads(line) for line in out.read_text().splitlines()]
        logits = _reference_logits(model, tokenizer, task, examples)
        assert [r["id"] for r in got] == [f"q{e.index}" for e in examples]
        if task.type == "regression":
            assert [r["score"] for r in got] == [float(v) for v in logits[:, 0]]
            continue
        probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()  # the whole matrix at once
        assert [r["label"] for r in got] == [task.labels[int(i)] for i in logits.argmax(-1)]
        assert [list(r["probabilities"].values()) for r in got] == [[float(p) for p in row] for row in probs]
