"""experiments.rapt.speed and its --against hf-trainer side: the AdamW kernel asked for is the one that runs, the
token counts are of the timed batches, the CPU is named by its model, and bad flags stop it before any work."""
from __future__ import annotations

import importlib
import json
import platform
from pathlib import Path

import pytest

from experiments.rapt import speed as speed_module
from experiments.rapt import versus_hf
from experiments.rapt.speed import main as speed
from mt_dnn.cli_utils import run_cli
from tests.glue_fixtures import write_glue

ADAM = importlib.import_module("torch.optim.adam")  # AdamW's step picks one of its three functions
KERNEL_FUNCTIONS = {"fused": "_fused_adam", "foreach": "_multi_tensor_adam", "forloop": "_single_tensor_adam"}


def _common(tmp_path, tiny_model_dir, glue):
    return ["--glue_dir", str(glue), "--model", str(tiny_model_dir), "--task", "rte", "--device", "cpu",
            "--threads", "1", "--batch_size", "4", "--cache_dir", str(tmp_path / "c")]


@pytest.mark.parametrize("kernel", ["forloop", "foreach"])
def test_the_kernel_asked_for_is_the_one_that_runs(tmp_path, tiny_model_dir, monkeypatch, kernel):
    calls = []  # which of torch's three AdamW implementations each optimizer step ran
    for name, function in KERNEL_FUNCTIONS.items():
        def spy(*a, _name=name, _f=getattr(ADAM, function), **k):
            calls.append(_name)
            return _f(*a, **k)
        monkeypatch.setattr(ADAM, function, spy)
    glue = write_glue(tmp_path / "g", tasks=("rte",))
    out = tmp_path / "speed.json"
    assert speed([*_common(tmp_path, tiny_model_dir, glue), "--steps", "2", "--warmup", "1", "--methods",
                  "standard,r3f", "--optimizer_kernel", kernel, "--out", str(out)]) == 0
    assert calls and set(calls) == {kernel}  # 3 steps x 2 methods, never the fused default
    r = json.loads(out.read_text())
    assert r["optimizer_kernel"] == kernel and r["optimizer_kernel_asked"] == kernel


def test_tokens_per_batch_are_of_the_timed_batches_only(tmp_path, tiny_model_dir, monkeypatch):
    seen = []  # every batch a step of the one method trained on, in order
    to_device = speed_module.to_device
    monkeypatch.setattr(speed_module, "to_device", lambda batch, device: seen.append(batch) or to_device(batch, device))
    glue = write_glue(tmp_path / "g", tasks=("rte",), n_train=40)
    out = tmp_path / "speed.json"
    assert speed([*_common(tmp_path, tiny_model_dir, glue), "--steps", "3", "--warmup", "3", "--methods", "standard",
                  "--out", str(out)]) == 0
    real = [int(b["attention_mask"].sum()) for b in seen]
    assert len(real) == 6 and sum(real[3:]) / 3 != sum(real) / 6  # the warm-up batches would move the mean
    assert json.loads(out.read_text())["mean_tokens_per_batch"] == pytest.approx(sum(real[3:]) / 3)


def test_against_trainer_counts_tokens_of_the_timed_rounds_only(tmp_path, tiny_model_dir, monkeypatch):
    rows_seen = []  # (real tokens, padded tokens) of each batch our standard side trained on, in order
    step = versus_hf.Ours.step

    def spy(self, task, rows):
        if self.trainer.cfg.method == "standard":
            lengths = self.trainer.train_data[task].row_lengths[rows]
            rows_seen.append((int(lengths.sum()), int(lengths.max()) * len(rows)))
        return step(self, task, rows)

    monkeypatch.setattr(versus_hf.Ours, "step", spy)
    glue = write_glue(tmp_path / "g", tasks=("rte",), n_train=40)
    out = tmp_path / "vs.json"
    assert speed(["--against", "hf-trainer", *_common(tmp_path, tiny_model_dir, glue), "--steps", "2", "--warmup",
                  "2", "--profile", "1", "--methods", "standard", "--out", str(out)]) == 0
    assert len(rows_seen) == 5  # 2 warm-up rounds, 2 timed, 1 profiled
    timed = rows_seen[2:4]
    r = json.loads(out.read_text())
    assert r["mean_tokens_per_batch"] == pytest.approx(sum(t for t, _ in timed) / 2)
    assert r["mean_padded_tokens_per_batch"]["ours"] == pytest.approx(sum(p for _, p in timed) / 2)
    assert sum(t for t, _ in timed) / 2 != sum(t for t, _ in rows_seen) / 5  # the test tells the two apart
    import transformers

    assert r["transformers"] == transformers.__version__ and r["device_name"] == _cpu_model_read_here()


def _cpu_model_read_here() -> str:
    """The CPU's model as this test reads it: /proc/cpuinfo's first "model name", else what platform says."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name") and ":" in line]
        if names and names[0]:
            return " ".join(names[0].split())
    return platform.processor() or platform.machine() or "cpu"


def test_a_cpu_run_records_the_cpu_model_and_the_transformers_version(tmp_path, tiny_model_dir):
    import transformers

    glue = write_glue(tmp_path / "g", tasks=("rte",))
    out = tmp_path / "speed.json"
    assert speed([*_common(tmp_path, tiny_model_dir, glue), "--steps", "1", "--warmup", "0", "--methods", "standard",
                  "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["device_name"] == _cpu_model_read_here() and r["transformers"] == transformers.__version__


def test_cpu_model_reads_cpuinfo_and_falls_back_to_platform(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)  Gold 6338 CPU\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R)  Gold 6338 CPU\n")
    assert versus_hf.cpu_model(info) == "Intel(R) Xeon(R) Gold 6338 CPU"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name (some ARM kernels)
    assert versus_hf.cpu_model(info) == (platform.processor() or platform.machine() or "cpu")
    assert versus_hf.cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine() or "cpu")


@pytest.mark.parametrize("against", [[], ["--against", "hf-trainer"]])
@pytest.mark.parametrize("flags,message", [
    (["--task", "nope"], "--task nope: unknown"),
    (["--methods", "standard,bogus"], "--methods bogus: unknown"),
    (["--methods", ""], "--methods '': no method"),
    (["--methods", "standard", "--steps", "0"], "--steps 0: must be at least 1"),
    (["--methods", "standard", "--warmup", "-1"], "--warmup -1: must be at least 0"),
])
def test_bad_flags_are_one_line_errors_before_any_work(tmp_path, monkeypatch, capsys, against, flags, message):
    def no_work(*a, **k):
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr(speed_module, "resolve_model", no_work)
    monkeypatch.setattr(speed_module, "pick_device", no_work)
    monkeypatch.setattr("mt_dnn.runtime.pick_device", no_work)
    assert run_cli(speed, [*against, *flags, "--glue_dir", str(tmp_path), "--cache_dir", str(tmp_path / "c"),
                           "--out", str(tmp_path / "x.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "c").exists() and not (tmp_path / "x.json").exists()
