"""benchmarks.gpu_speed: the peak table lookup, the MFU formula, and a CPU smoke run of one configuration."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.gpu_speed as gs


@pytest.mark.parametrize("name,precision,peak", [("NVIDIA H100 80GB HBM3", "bf16", 989.4),
                                                 ("NVIDIA H100 PCIe", "tf32", 378.0), ("NVIDIA H200", "fp32", 67.0),
                                                 ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("Tesla T4", "bf16", None)])
def test_peak_by_gpu_name(name, precision, peak):
    assert gs.peak_tflops(name, precision) == peak


def test_summary_tokens_per_second_and_mfu():
    result = {"mean_padded_tokens_per_batch": {"ours": 4096, "hf": 4096}, "device_name": "NVIDIA H200",
              "median_ms": {"standard": 20.0, "hf_trainer": 25.0, "rapt": 30.0, "smart": 40.0},
              "ratio_standard_over_hf": 0.8, "params": 110_000_000, "params_non_embedding": 85_000_000,
              "ratios_to_standard": {"rapt": 1.5, "smart": 2.0}}
    row = gs.summarize(result, "bf16", 989.4)
    assert row["tokens_per_s_ours"] == 204800 and row["tokens_per_s_trainer"] == 163840  # 4096 / 0.020 s
    assert row["mfu_ours"] == pytest.approx(6 * 110e6 * 4096 / 0.020 / 989.4e12, abs=1e-4)
    assert row["mfu_non_embedding_trainer"] == pytest.approx(6 * 85e6 * 4096 / 0.025 / 989.4e12, abs=1e-4)
    assert row["rapt/smart"] == 0.75


def test_cpu_smoke_of_one_configuration(tmp_path, glue_dir, monkeypatch):
    from mt_dnn.model import default_model_path

    assets = tmp_path / "assets"
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert gs.main(["prepare", "--assets", str(assets), "--glue_dir", str(glue_dir)]) == 0
    assert (assets / "minilm" / "vocab.txt").read_bytes() == (Path(default_model_path()) / "vocab.txt").read_bytes()
    out = tmp_path / "out"
    assert gs.main(["run", "--cpu_smoke", "--assets", str(assets), "--out", str(out), "--work", str(tmp_path / "w"),
                    "--only", "bert-base/tf32/none", "--peak_tflops", "1"]) == 0
    report = json.loads((out / "gpu_speed.json").read_text())
    row = report["configs"]["bert-base/tf32/none"]
    assert row["ms_ours"] > 0 and row["ms_trainer"] > 0 and row["mfu_ours"] > 0
    assert {"rapt/smart", "rapt_shared/smart"} <= set(row) and set(report["configs"]) == {"bert-base/tf32/none"}
