"""benchmarks.gpu_speed: the peak table lookup, the MFU formula, and a CPU smoke run of one configuration."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.gpu_speed as gs


@pytest.mark.parametrize("name,precision,peak", [("NVIDIA H100 80GB HBM3", "bf16", 989.4),
                                                 ("NVIDIA H100 PCIe", "tf32", 378.0), ("NVIDIA H200", "fp32", 67.0),
                                                 ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("Tesla T4", "bf16", None),
                                                 ("NVIDIA A100 80GB PCIe", "tf32", 156.0),
                                                 # whole model names: an L40 is not an L4, nor an L40S
                                                 ("NVIDIA L40", "bf16", 181.0), ("NVIDIA L40S", "bf16", 362.0),
                                                 ("NVIDIA L4", "bf16", 121.0), ("NVIDIA L40", "fp32", 90.5),
                                                 # not listed: none rather than another card's figure
                                                 ("NVIDIA H100 NVL", "bf16", None), ("NVIDIA H200 NVL", "bf16", None),
                                                 ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bf16", None),
                                                 ("NVIDIA GeForce RTX 4090", "fp32", None)])
def test_peak_by_gpu_name(name, precision, peak):
    assert gs.peak_tflops(name, precision) == peak


def test_peaks_per_precision_and_a_bare_number_for_one_precision_only():
    assert gs.parse_peaks("bf16=989, tf32=495,fp32=67", ["bf16", "fp32", "tf32"]) == \
        {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0}
    assert gs.parse_peaks("312", ["bf16"]) == {"bf16": 312.0}
    for text, precisions, why in (("989", ["bf16", "fp32"], "a bare number is the peak of one precision"),
                                  ("fp16=1", ["bf16"], "'fp16' is not a precision"),
                                  ("bf16=1,bf16=2", ["bf16"], "bf16 given twice"),
                                  ("bf16=x", ["bf16"], "'x' is not a number"), ("0", ["bf16"], "positive"),
                                  ("bf16=-3", ["bf16"], "positive"), ("many", ["bf16"], "not a number")):
        with pytest.raises(ValueError, match=why):
            gs.parse_peaks(text, precisions)


def _assets(tmp_path, glue_dir):
    assets = tmp_path / "assets"
    assert gs.main(["prepare", "--assets", str(assets), "--glue_dir", str(glue_dir)]) == 0
    return assets


def test_each_precision_gets_its_own_peak(tmp_path, glue_dir, monkeypatch):
    """MFU of an fp32 and a bf16 configuration, each against the peak given for its precision (a tf32 one, not
    given, against the table's figure of the GPU)."""
    monkeypatch.setattr(gs, "build_encoders", lambda assets, work, tiny: {"minilm": "m", "bert-base": "b"})
    ms = {"fp32": 40.0, "tf32": 20.0, "bf16": 10.0}

    def fake_run(encoder_dir, precision, compile_mode, methods, a, out_json):
        return {"mean_padded_tokens_per_batch": {"ours": 4096, "hf": 4096}, "device_name": "NVIDIA H100 80GB HBM3",
                "median_ms": {"standard": ms[precision], "hf_trainer": 2 * ms[precision]},
                "ratio_standard_over_hf": 0.5, "params": 22_000_000, "params_non_embedding": 10_000_000,
                "ratios_to_standard": {}, "median_cpu_ms": {}, "ms": {}, "kernel_used": {},
                "mean_tokens_per_batch": 2000, "tf32": precision == "tf32", "compile": compile_mode}

    monkeypatch.setattr(gs, "one_config", fake_run)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    out = tmp_path / "out"
    assert gs.main(["run", "--assets", str(_assets(tmp_path, glue_dir)), "--out", str(out), "--work",
                    str(tmp_path / "w"), "--only", "minilm/fp32/none,minilm/tf32/none,minilm/bf16/none",
                    "--peak_tflops", "bf16=900,fp32=60"]) == 0
    rows = json.loads((out / "gpu_speed.json").read_text())["configs"]
    for key, precision, peak in (("minilm/fp32/none", "fp32", 60.0), ("minilm/bf16/none", "bf16", 900.0),
                                 ("minilm/tf32/none", "tf32", 494.7)):
        row = rows[key]
        assert row["peak_tflops"] == peak and row["precision"] == precision
        assert row["mfu_ours"] == pytest.approx(6 * 22e6 * 4096 / (ms[precision] / 1e3) / (peak * 1e12), abs=1e-4)
    assert rows["minilm/tf32/none"]["peak_from"] == "PEAK_TFLOPS" and rows["minilm/fp32/none"]["peak_from"] == \
        "--peak_tflops"


@pytest.mark.parametrize("args,message", [
    (["run", "--peak_tflops", "989"], "a bare number is the peak of one precision"),
    (["run", "--only", "minilm/fp32/none,minilm/bf16/none", "--peak_tflops", "989"], "a bare number"),
    (["run", "--only", "minilm/fp8/none"], "--only minilm/fp8/none: no such configuration"),
    (["run", "--steps", "0"], "--steps 0: must be at least 1"),
    (["run", "--task", "nope"], "--task nope: unknown"),
])
def test_bad_run_flags_stop_before_any_work(tmp_path, glue_dir, monkeypatch, capsys, args, message):
    assets = _assets(tmp_path, glue_dir)
    capsys.readouterr()
    monkeypatch.setattr(gs, "build_encoders", lambda *a: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exc:
        gs.main([*args, "--cpu_smoke", "--assets", str(assets), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_prepare_and_run_without_their_files_are_one_line_errors(tmp_path, glue_dir, capsys):
    for args, message in ((["prepare", "--task", "nope"], "--task nope: unknown; choose from"),
                          (["prepare", "--glue_dir", str(tmp_path / "nowhere")],
                           f"--glue_dir {tmp_path / 'nowhere'}: no {tmp_path / 'nowhere' / 'RTE' / 'train.tsv'}"),
                          (["run", "--cpu_smoke"], "run `python -m benchmarks.gpu_speed prepare --assets")):
        with pytest.raises(SystemExit) as exc:
            gs.main([*args, "--assets", str(tmp_path / "assets"), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "assets").exists() and not (tmp_path / "o").exists()  # nothing copied or built
    assets = _assets(tmp_path, glue_dir)
    (assets / "minilm" / "vocab.txt").unlink()
    with pytest.raises(SystemExit):
        gs.main(["run", "--cpu_smoke", "--assets", str(assets), "--out", str(tmp_path / "o")])
    assert f"no {assets / 'minilm' / 'vocab.txt'}" in capsys.readouterr().err


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
