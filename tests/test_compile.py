"""--compile: the model is compiled in place (torch.compile), so training gives the uncompiled run's losses within
float error and the saved model has the same file layout; the setting is recorded and is not part of the recipe."""
from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mt_dnn.run_folder import NOT_RESULT
from mt_dnn.train import main


def _run(tmp_path, glue_dir, model_dir, name, *extra):
    out = tmp_path / name
    assert main(["--glue_dir", str(glue_dir), "--model", str(model_dir), "--output_dir", str(out), "--cache_dir",
                 str(tmp_path / "cache"), "--tasks", "rte", "--batch_size", "8", "--lr", "1e-3", "--max_steps", "2",
                 "--device", "cpu", "--threads", "1", *extra]) == 0
    return out


# torch.compile's CPU backend builds C++ kernels: it needs a compiler and Python's headers
NO_COMPILER = (shutil.which("c++") or shutil.which("g++")) is None or not (
    Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


@pytest.mark.skipif(NO_COMPILER, reason="torch.compile on the CPU needs a C++ compiler and Python.h")
def test_compiled_run_matches_the_plain_run(tmp_path, glue_dir, tiny_model_dir):
    plain = _run(tmp_path, glue_dir, tiny_model_dir, "plain")
    compiled = _run(tmp_path, glue_dir, tiny_model_dir, "compiled", "--compile", "default")
    last = [json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (plain, compiled)]
    assert last[1]["loss"] == pytest.approx(last[0]["loss"], rel=1e-5)  # dropout draws the same masks
    dev = [[json.loads(x)["metrics"] for x in (d / "metrics.jsonl").read_text().splitlines()[:-1]]
           for d in (plain, compiled)]
    assert dev[0] == dev[1]
    assert json.loads((compiled / "config.json").read_text())["compile"] == "default"
    weights = [load_file(str(d / "best" / "model.safetensors")) for d in (plain, compiled)]
    assert weights[0].keys() == weights[1].keys()  # no "_orig_mod." prefixes
    assert "compile" in NOT_RESULT


def test_unknown_compile_mode_is_one_line_error(tmp_path, glue_dir, tiny_model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "x"),
              "--compile", "fast"])
    err = capsys.readouterr().err
    assert "--compile" in err and "invalid choice" in err and "reduce-overhead" in err


@pytest.mark.parametrize("method", ["rapt", "smart", "r3f"])
def test_a_method_that_adds_noise_through_hooks_refuses_compile(method, tmp_path, glue_dir, tiny_model_dir,
                                                                capsys):
    """A compiled graph does not run hooks added after it was compiled: RAPT's and SMART's noisy passes would
    fail and R3F's would silently be a clean pass. Refused before anything is written, here and in
    RegularizedTrainer."""
    from transformers import BertForSequenceClassification, TrainingArguments

    from data_utils.task_def import ConfigError
    from mt_dnn.cli_utils import run_cli
    from mt_dnn.hf import RegularizedTrainer
    from tests.conftest import tiny_config

    out = tmp_path / "run"
    assert run_cli(main, ["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--output_dir", str(out),
                          "--tasks", "rte", "--method", method, "--compile", "default", "--max_steps", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --compile default works with --method standard only: {method}'s noise goes in through hooks added "
        "at each step, which a compiled model would not run")
    assert not out.exists()
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), report_to="none", torch_compile=True, use_cpu=True)
    with pytest.raises(ConfigError, match="torch_compile works with method standard only"):
        RegularizedTrainer(model=BertForSequenceClassification(tiny_config("bert", 0.0)), args=args, method=method)
    assert not (tmp_path / "hf").exists()
