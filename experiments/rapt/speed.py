"""Step-time benchmark: standard, SMART, both RAPT paths and R3F on the same real batches of a task, interleaved.

    python -m experiments.rapt.speed --glue_dir $GLUE_DIR --task rte --steps 24   # -> results/speed_rte.json
    python -m experiments.rapt.speed --device cuda --precision bf16 --model bert-base-uncased --steps 50
    python -m experiments.rapt.speed --against hf-trainer --glue_dir $GLUE_DIR --task rte --threads 2 \
        --warmup 3 --steps 30 --methods standard,rapt,smart,r3f --optimizer_kernel default
        # -> results/speed_vs_hf_rte_default.json: ours against transformers.Trainer (experiments.rapt.versus_hf)

Each method has its own copy of the model and optimizer, so all start from the same weights; at step i every
method trains on batch i, in a rotating order, so machine noise hits them alike. A step is the full
training step (batch to the device, forward passes under autocast, backward, clip, optimizer), as the trainer runs
it (on CUDA: TF32 matmuls unless --no_tf32, fused AdamW; fp16 with a GradScaler); --warmup untimed steps come
first. On CUDA each timed step is bracketed by torch.cuda.synchronize(), so it measures the GPU's work, not the
launch queue. Reports each method's median step time and the ratios RAPT/SMART and RAPT/standard, with the
device's name (a GPU's, or the CPU's model from ``/proc/cpuinfo`` on Linux), the precision, the AdamW kernel that ran
(``--optimizer_kernel`` forces one: forloop, foreach or fused), the mean real tokens of the timed batches and the
torch and transformers versions; on the CPU also the median CPU time of this process per step
and its ratios (``median_cpu_seconds``, ``cpu_ratios``), which other programs loading the machine do not move
(with one thread, the cleanest measure on a shared machine). RAPT's layer r varies with the step (uniform over 1..3), so
use >= 20 steps.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from data_utils import atomic
from data_utils.batching import MultiTaskSampler, collate
from data_utils.features import load_features
from data_utils.task_def import load_task_defs
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.model import DEFAULT_MODEL, MultiTaskModel, checkpoint_pooling, load_encoder, resolve_model
from mt_dnn.config import COMPILE_MODES, PRECISIONS
from mt_dnn.perturbation import build_regularizer
from mt_dnn.runtime import autocast, build_optimizer, pick_device, set_tf32, to_device
from mt_dnn.trainer import TrainStep, seed_everything

from experiments.rapt import versus_hf
from experiments.rapt.versus_hf import KERNELS, device_name

logger = logging.getLogger(__name__)

METHODS = {
    "standard": ("standard", {}),
    "smart": ("smart", {}),
    "rapt": ("rapt", {}),
    "rapt_shared": ("rapt", {"share_lower_layers": True}),
    "r3f": ("r3f", {}),
}


def _sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (CUDA kernels run asynchronously); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.speed", description=__doc__.splitlines()[0])
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "glue_data"), help="GLUE data folder (default: "
                   "$GLUE_DIR, else glue_data)")
    p.add_argument("--task", default="rte")
    p.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=30, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="fp32, or bf16/fp16 autocast")
    p.add_argument("--no_tf32", action="store_true", help="on CUDA, full fp32 matmuls instead of TF32")
    p.add_argument("--cache_dir", default=".cache/features")
    p.add_argument("--out", default=None, help="default: experiments/rapt/results/speed_<task>.json "
                                               "(speed_vs_hf_<task>_<kernel>.json with --against hf-trainer)")
    p.add_argument("--against", default="none", choices=("none", "hf-trainer"),
                   help="hf-trainer: our trainer's loop against plain transformers.Trainer, step by step in one "
                        "process (experiments.rapt.versus_hf)")
    p.add_argument("--optimizer_kernel", default="default", choices=KERNELS,
                   help="AdamW kernel (on both sides with --against): default (each side's own), forloop, "
                        "foreach or fused")
    p.add_argument("--trainer_kernel", default="same", choices=("same",) + KERNELS,
                   help="with --against: the Trainer's AdamW kernel when it is not --optimizer_kernel's")
    p.add_argument("--pooling", default="cls", choices=("auto", "cls", "mean"),
                   help="our sentence vector with --against (cls: the [CLS] token, as the Trainer's classifier)")
    p.add_argument("--group_by_length", default="none", choices=("none", "ours", "both"),
                   help="with --against: length-grouped batches (as mt_dnn.train --group_by_length plans them) "
                        "for our side only, or the same batches for both sides")
    p.add_argument("--compile", default="none", choices=COMPILE_MODES,
                   help="with --against: torch.compile on both sides (ours: --compile; the Trainer: torch_compile)")
    p.add_argument("--profile", type=int, default=0,
                   help="with --against: after the timed steps, profile this many more steps of each side "
                        "(torch.profiler; tables in <out>_profile.txt)")
    args = p.parse_args(argv)
    setup_logging()
    names = versus_hf.check_args(args, METHODS)  # before any model or data is loaded
    if args.against == "hf-trainer":
        versus_hf.run(args, METHODS, names)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    set_tf32(device, not args.no_tf32)
    seed_everything(1)
    task = load_task_defs()[args.task]
    path = resolve_model(args.model)
    encoder, tokenizer = load_encoder(path)
    base = MultiTaskModel(encoder, [task], checkpoint_pooling(path)).to(device)
    feats = load_features(args.glue_dir, task, task.splits_of("train")[0], tokenizer, args.max_seq_len, args.cache_dir)
    sampler = MultiTaskSampler({task.name: len(feats)}, args.batch_size, seed=1)
    plan = sampler.epoch_plan(0)
    total = args.warmup + args.steps
    batches = [collate(feats, rows.tolist(), tokenizer.pad_token_id, task.type == "regression")
               for _, rows in (plan * (total // len(plan) + 1))[:total]]
    runs = {}
    for name in names:
        method, opts = METHODS[name]
        model = copy.deepcopy(base).train()
        reg = build_regularizer(method, opts, seed=1)
        reg.check(model)
        opt = build_optimizer("adamw", [{"params": list(model.parameters())}], lr=2e-5)
        if args.optimizer_kernel != "default":  # new groups: the built ones carry its kernel flags, which win
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=2e-5, **versus_hf.FORCED[args.optimizer_kernel])
        scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
        runs[name] = {"step": TrainStep(model, reg), "model": model, "opt": opt, "reg": reg, "scaler": scaler,
                      "times": [], "cpu_times": []}
    for i, batch in enumerate(batches):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            r = runs[name]
            r["reg"].step = i
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            with autocast(device, args.precision):
                loss, _, _, _ = r["step"](to_device(batch, device))
            r["scaler"].scale(loss).backward()  # the scaler is a pass-through unless --precision fp16
            r["scaler"].unscale_(r["opt"])
            torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0)
            r["scaler"].step(r["opt"])
            r["scaler"].update()
            r["opt"].zero_grad(set_to_none=True)
            _sync(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup:
                r["times"].append(dt)
                r["cpu_times"].append(dc)
        logger.info("step %d/%d  %s", i + 1, total,
                    "  ".join(f"{n} {runs[n]['times'][-1]:.2f}s" for n in names if runs[n]["times"]))
    med = {n: statistics.median(runs[n]["times"]) for n in names}
    result = {
        "task": args.task, "model": args.model or DEFAULT_MODEL,  # the encoder asked for, not where it lies
        "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
        "max_seq_len": args.max_seq_len, "threads": torch.get_num_threads(),
        "device": str(device), "device_name": device_name(device), "precision": args.precision,
        "optimizer_kernel": versus_hf.kernel_of(runs[names[0]]["opt"]),  # the kernel that ran
        "optimizer_kernel_asked": args.optimizer_kernel,
        "tf32": device.type == "cuda" and not args.no_tf32, "torch": torch.__version__,
        "transformers": versus_hf.transformers_version(),
        "mean_tokens_per_batch": statistics.mean(int(b["attention_mask"].sum()) for b in batches[args.warmup:]),
        "median_seconds": med,
        "mean_seconds": {n: statistics.mean(runs[n]["times"]) for n in names},
    }
    result["ratios"] = _ratios(med)
    cpu_med = {}
    if device.type == "cpu":  # this process's CPU time per step: what other programs on the machine do not move
        cpu_med = {n: statistics.median(runs[n]["cpu_times"]) for n in names}
        result["median_cpu_seconds"] = cpu_med
        result["cpu_ratios"] = _ratios(cpu_med)
    out = Path(args.out or f"experiments/rapt/results/speed_{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, json.dumps(result, indent=2))
    print(f"median step time over {args.steps} interleaved steps ({args.task}, batch {args.batch_size}, "
          f"{result['device_name']}, {args.precision}):")
    for n in names:
        print(f"  {n:12s} {med[n]:.3f} s" + (f"  (CPU time {cpu_med[n]:.3f} s)" if cpu_med else ""))
    for k, v in result["ratios"].items():
        print(f"  {k:22s} {v:.3f}" + (f"  (CPU time {result['cpu_ratios'][k]:.3f})" if cpu_med else ""))
    return 0


RATIOS = (("rapt", "smart"), ("rapt_shared", "smart"), ("rapt", "standard"), ("rapt_shared", "standard"),
          ("smart", "standard"), ("r3f", "standard"), ("r3f", "smart"))


def _ratios(seconds: dict[str, float]) -> dict[str, float]:
    """``{"a/b": seconds[a] / seconds[b]}`` for the :data:`RATIOS` pairs that both ran."""
    return {f"{a}/{b}": seconds[a] / seconds[b] for a, b in RATIOS if a in seconds and b in seconds}


if __name__ == "__main__":
    sys.exit(run_cli(main))
