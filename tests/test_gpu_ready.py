"""What makes the trainer fast on GPUs, checked on CPU: one host read per step, the learning rate per encoder,
TF32 and fused AdamW only on CUDA, optimizer state across kernels, and the speed benchmark's record."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import mt_dnn
from mt_dnn import runtime
from mt_dnn.config import TrainConfig, resolve_lr
from mt_dnn.model import DEFAULT_MODEL
from mt_dnn.train import main


def _cfg(tmp_path, glue_dir, model_dir, **kw) -> TrainConfig:
    base = dict(tasks="rte", glue_dir=str(glue_dir), model=str(model_dir), output_dir=str(tmp_path / "r"),
                cache_dir=str(tmp_path / "c"), batch_size=4, no_eval=True)
    return TrainConfig(**{**base, **kw})


# ---- one read on the host per step -----------------------------------------------------------------------------

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__format__")


@pytest.mark.parametrize("method,options", [("standard", {}), ("smart", {}),
                                            ("rapt", {"max_layer": 2}), ("rapt", {"max_layer": 2,
                                                                                  "share_lower_layers": True})])
def test_a_training_step_reads_one_value_on_the_host(tmp_path, glue_dir, tiny_model_dir, monkeypatch, method,
                                                     options):
    """Losses, SMART's and RAPT's logs stay on the device; the step's only read is the agreed finite flag."""
    from mt_dnn.trainer import Trainer

    cfg = _cfg(tmp_path, glue_dir, tiny_model_dir, method=method, method_options=options, max_steps=3,
               grad_accumulation_steps=2, log_every=1000, lr=1e-3)
    trainer = Trainer(cfg)
    trainer.setup()
    ours = str(Path(mt_dnn.__file__).parent)
    reads: list[str] = []
    inside = [False]
    for name in READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            caller = sys._getframe(1).f_code
            if inside[0] and caller.co_filename.startswith(ours):
                reads.append(f"{_name} in {Path(caller.co_filename).name}:{caller.co_name}")
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    step = trainer.train_step

    def counted(micro):
        inside[0] = True
        try:
            return step(micro)
        finally:
            inside[0] = False

    trainer.train_step = counted
    try:
        record = trainer.train()
    finally:
        monkeypatch.undo()
        trainer.close()
    assert record["steps"] == 3 and record["loss"] > 0
    assert reads == ["tolist in runtime.py:step_verdict"] * 3
    assert (record["reg_loss"] > 0) == (method != "standard")


def test_logs_are_read_when_logged(tmp_path, glue_dir, tiny_model_dir):
    assert runtime.host_floats({"a": 1, "b": torch.tensor(2.5), "c": torch.tensor(3)}) == {"a": 1.0, "b": 2.5,
                                                                                            "c": 3.0}
    out = tmp_path / "run"
    assert main(["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--output_dir", str(out),
                 "--cache_dir", str(tmp_path / "c"), "--tasks", "rte", "--max_steps", "2", "--batch_size", "4",
                 "--method", "smart", "--log_every", "1", "--no_eval"]) == 0
    log = (out / "train.log").read_text()
    assert re.search(r"step 2/2 loss \d\.\d{4} reg \d\.\d{4} lr \S+ smart_delta_inf [\d.e-]+ smart_grad_share "
                     r"[\d.e-]+ smart_skipped 0 smart_skipped_total 0", log), log[-600:]


def test_smart_skip_is_decided_on_the_device_and_counted(monkeypatch):
    from mt_dnn import losses
    from mt_dnn.perturbation import build_regularizer
    from tests.conftest import tiny_batch, tiny_model

    model, batch = tiny_model(), tiny_batch()
    reg = build_regularizer("smart")
    loss, logs = reg(model, batch, model(batch))
    assert torch.is_tensor(logs["smart_grad_share"]) and reg.skipped == 0
    monkeypatch.setattr(losses, "adversarial_objective", lambda kind, c, n: (n * float("nan")).sum())
    for _ in range(2):
        loss, logs = reg(model, batch, model(batch))
        loss.backward()
    assert loss.item() == 0.0 and float(logs["smart_skipped_total"]) == 2.0 and reg.skipped == 2
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    reg.skipped = 5  # a checkpoint's count
    reg(model, batch, model(batch))
    assert reg.skipped == 6


# ---- the learning rate per encoder ----------------------------------------------------------------------------

def _fake_saved_model(d: Path, encoder_config: dict) -> Path:
    """A folder that find_model_dir accepts, with the given encoder config (enough to resolve --lr)."""
    (d / "encoder").mkdir(parents=True)
    for name in ("model.safetensors", "model.json", "tasks.yml"):
        (d / name).write_text("")
    (d / "encoder" / "config.json").write_text(json.dumps(encoder_config))
    return d


def test_lr_follows_the_encoder_unless_given(tmp_path, tiny_model_dir):
    from mt_dnn.model import default_model_path

    packaged = default_model_path()
    assert resolve_lr(TrainConfig()) == (1e-4, "the default for the packaged MiniLM")
    assert resolve_lr(TrainConfig(model=DEFAULT_MODEL))[0] == 1e-4
    assert resolve_lr(TrainConfig(model=packaged))[0] == 1e-4
    other = (2e-5, "the default for encoders other than the packaged MiniLM")
    assert resolve_lr(TrainConfig(model=str(tiny_model_dir))) == other
    assert resolve_lr(TrainConfig(model="bert-large-uncased")) == other
    assert resolve_lr(TrainConfig(model=str(tiny_model_dir), lr=3e-5)) == (3e-5, "--lr")
    assert resolve_lr(TrainConfig(lr=3e-5)) == (3e-5, "--lr")
    # --init_checkpoint: the encoder it holds decides (a run fine-tuned from the MiniLM keeps its rate)
    mini = json.loads((Path(packaged) / "config.json").read_text())
    assert resolve_lr(TrainConfig(init_checkpoint=str(_fake_saved_model(tmp_path / "a", mini))))[0] == 1e-4
    tiny = json.loads((tiny_model_dir / "config.json").read_text())
    assert resolve_lr(TrainConfig(init_checkpoint=str(_fake_saved_model(tmp_path / "b", tiny))))[0] == 2e-5


def test_resolved_lr_is_logged_saved_and_resumed(tmp_path, glue_dir, tiny_model_dir):
    out = tmp_path / "run"
    args = ["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--output_dir", str(out), "--cache_dir",
            str(tmp_path / "c"), "--tasks", "rte", "--max_steps", "3", "--save_every_steps", "2", "--batch_size", "4",
            "--no_eval"]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["lr"] == 2e-5
    assert ("lr 2e-05 (the default for encoders other than the packaged MiniLM; pass --lr to choose)"
            in (out / "train.log").read_text())
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:-1]))  # unfinished: resumable from the step-2 checkpoint
    from mt_dnn.cli_utils import run_cli

    assert run_cli(main, [*args, "--resume", "--lr", "1e-3"]) == 2  # another rate: refused
    assert run_cli(main, [*args, "--resume"]) == 0  # no --lr again: the same resolved rate
    assert "resumed from" in (out / "train.log").read_text()


def test_lr_flag_help_and_no_tf32_flag():
    from mt_dnn.train import build_parser, config_from_args

    parser = build_parser()
    argv = ["--tasks", "rte", "--no_tf32"]
    cfg = config_from_args(parser.parse_args(argv))
    assert cfg.lr is None and cfg.tf32 is False
    assert config_from_args(parser.parse_args(["--tasks", "rte"])).tf32 is True


def test_grid_writes_no_tf32_for_false():
    from experiments.rapt.grid import flag_argv
    from mt_dnn.train import build_parser

    assert flag_argv({"tf32": False, "no_eval": False, "lr": 2e-5}, build_parser()) == ["--no_tf32", "--lr", "2e-05"]


# ---- TF32, fused AdamW, optimizer state ------------------------------------------------------------------------

def test_tf32_is_cuda_only():
    before = torch.get_float32_matmul_precision()
    assert runtime.set_tf32(torch.device("cpu"), True) is None
    assert torch.get_float32_matmul_precision() == before


def test_fused_adamw_on_one_cpu_or_gpu_device(monkeypatch):
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]
    opt = runtime.build_optimizer("adamw", [{"params": params}], 1e-3)
    assert opt.param_groups[0]["fused"]  # CPU float parameters: the fused kernel
    assert isinstance(runtime.build_optimizer("adamax", [{"params": params}], 1e-3), torch.optim.Adamax)
    seen = {}
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, lr, **kw: seen.update(kw))
    runtime.build_optimizer("adamw", [{"params": [torch.nn.Parameter(torch.zeros(2, device="meta"))]}], 1e-3)
    assert seen == {}  # a device the fused kernel does not cover: torch's default kernel


def test_fused_adamw_step_is_adamw(monkeypatch):
    """Two steps of the optimizer the trainer builds against AdamW written out (Loshchilov & Hutter, decoupled
    weight decay; torch's bias correction), in float64 by hand."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    w0 = w.detach().double().clone()
    grads = [torch.randn(5, 3), torch.randn(5, 3)]
    opt = runtime.build_optimizer("adamw", [{"params": [w], "weight_decay": 0.1}], 1e-2)
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    m = torch.zeros_like(w0)
    v = torch.zeros_like(w0)
    expect = w0.clone()
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        g = g.double()
        expect = expect * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        expect = expect - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    assert torch.allclose(w.detach().double(), expect, atol=1e-6)
    assert not torch.allclose(w.detach().double(), w0, atol=1e-4)


def test_optimizer_state_keeps_this_machines_kernel():
    from mt_dnn.checkpoint import load_optimizer

    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    saved = opt.state_dict()
    saved["param_groups"][0]["fused"] = True  # as written by a GPU run
    fresh = torch.optim.AdamW([p], lr=0.1)
    load_optimizer(fresh, saved)
    assert not fresh.param_groups[0]["fused"] and fresh.param_groups[0]["lr"] == 0.1
    fresh.step()  # the CPU kernel runs on the GPU run's state
    assert int(fresh.state[p]["step"]) == 2


# ---- the speed benchmark ---------------------------------------------------------------------------------------

def test_speed_records_device_precision_and_torch(tmp_path, tiny_model_dir):
    from experiments.rapt.speed import main as speed
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "g", tasks=("rte",))
    out = tmp_path / "speed.json"
    assert speed(["--glue_dir", str(glue), "--model", str(tiny_model_dir), "--task", "rte", "--steps", "2",
                  "--warmup", "1", "--batch_size", "4", "--methods", "standard,smart,r3f", "--device", "cpu",
                  "--precision", "bf16", "--threads", "1", "--cache_dir", str(tmp_path / "c"),
                  "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["device_name"] and result["precision"] == "bf16"
    assert result["torch"] == torch.__version__ and result["tf32"] is False
    assert result["steps"] == 2 and result["warmup"] == 1
    assert set(result["median_seconds"]) == {"standard", "smart", "r3f"}
    assert all(v > 0 for v in result["median_seconds"].values()) and "r3f/smart" in result["ratios"]
    # on the CPU, this process's CPU time per step too, and its ratios on the same pairs
    cpu = result["median_cpu_seconds"]
    assert set(cpu) == {"standard", "smart", "r3f"} and all(v > 0 for v in cpu.values())
    assert set(result["cpu_ratios"]) == set(result["ratios"])
    assert result["cpu_ratios"]["r3f/smart"] == pytest.approx(cpu["r3f"] / cpu["smart"])
    shutil.rmtree(tmp_path / "c")
