"""The step-time benchmark against transformers.Trainer: both sides on the same batches, with the kernel asked for."""
from __future__ import annotations

import json

import pytest
import torch

from experiments.rapt.speed import main as speed
from experiments.rapt.versus_hf import kernel_of
from tests.glue_fixtures import write_glue


@pytest.mark.parametrize("kernel,group", [("fused", "both"), ("forloop", "none"), ("foreach", "ours")])
def test_against_trainer_runs_both_sides_on_the_same_batches(tmp_path, tiny_model_dir, kernel, group):
    glue = write_glue(tmp_path / "g", tasks=("rte",), n_train=40)
    out = tmp_path / "vs.json"
    assert speed(["--against", "hf-trainer", "--glue_dir", str(glue), "--model", str(tiny_model_dir), "--task", "rte",
                  "--steps", "3", "--warmup", "1", "--batch_size", "4", "--methods", "standard,r3f",
                  "--device", "cpu", "--threads", "1", "--cache_dir", str(tmp_path / "c"), "--optimizer_kernel",
                  kernel, "--group_by_length", group, "--profile", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["kernel_used"] == {"ours": kernel, "hf_trainer": kernel}
    assert set(r["median_ms"]) == set(r["median_cpu_ms"]) == {"standard", "r3f", "hf_trainer"}
    assert all(len(v) == 3 for v in r["ms"].values()) and all(len(v) == 3 for v in r["cpu_ms"].values())
    assert all(0 < c for v in r["cpu_ms"].values() for c in v) and "r3f" in r["cpu_ratios_to_standard"]
    std, hf = r["median_ms"]["standard"], r["median_ms"]["hf_trainer"]  # each rounded to 0.01 ms in the JSON
    bound = 0.005 / std + 0.005 / hf  # the most that rounding can move the ratio, relative
    assert r["ratio_standard_over_hf"] == pytest.approx(std / hf, rel=bound + 1e-9)
    padded = r["mean_padded_tokens_per_batch"]
    assert padded["ours"] < padded["hf"] if group == "ours" else padded["ours"] == padded["hf"]
    assert r["threads"] == 1 and r["threads_hf_thread"] == 1 and r["group_by_length"] == group
    assert r["steps"] == 3 and r["warmup"] == 1 and r["lr_warmup"] == pytest.approx(0.1)  # rounds, not the schedule
    assert "aten::" in (tmp_path / "vs_profile.txt").read_text()


def test_kernel_of_names_what_adamw_runs():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert kernel_of(torch.optim.AdamW(p)) == "forloop"  # torch's default for CPU tensors
    assert kernel_of(torch.optim.AdamW(p, foreach=True)) == "foreach"
    assert kernel_of(torch.optim.AdamW(p, fused=True)) == "fused"
