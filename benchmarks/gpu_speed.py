"""Step times on one GPU: our trainer against plain ``transformers.Trainer``, for a small and a BERT-base-sized
encoder, in fp32, TF32 and bf16, with and without ``torch.compile``; tokens/s and model FLOPs utilisation.

    python -m benchmarks.gpu_speed prepare                    # here: the files the GPU machine needs
    python3 -m benchmarks.gpu_speed run --out $OUT            # there (benchmarks/gpu_speed.sh runs both)
    python -m benchmarks.gpu_speed run --cpu_smoke            # here: every configuration, tiny, on the CPU

``prepare`` copies into ``--assets`` (default ``runs/gpu_assets``, ignored by git, small enough to travel with
the working tree) the packaged MiniLM's config and tokenizer files and the task's train file. ``run`` builds
two encoders with random weights from configs (a step's time does not depend on the weights): ``minilm``, the
packaged all-MiniLM-L6-v2's architecture (6 layers, width 384), and ``bert-base`` (``BertConfig()``: 12 layers,
width 768, 110M parameters), both with the packaged tokenizer (BERT's uncased vocabulary). Each configuration
(encoder, precision, compile mode) is one run of :mod:`experiments.rapt.versus_hf` (ours and the Trainer on the
same batches, step by step in one process, CUDA-synchronized around each step); configurations run in a fixed
order of importance until ``--budget_s`` is spent, each result written at once to ``--out``/``gpu_speed.json``
(one file: every step's time of every configuration is in it).

Per configuration: ms per step of each side (median), ours / Trainer, padded tokens/s, and model FLOPs
utilisation ``6 * params * padded tokens per step / (seconds per step * peak FLOP/s)`` (``mfu``: all parameters;
``mfu_non_embedding``: without the embedding tables, which do no matmul), the peak from ``PEAK_TFLOPS`` for the
GPU model (the whole model name: none for a model not listed) and precision (dense, no sparsity; ``--peak_tflops
bf16=989,tf32=495,fp32=67`` gives them per precision, a bare number only when one precision runs). At BERT-base
size with TF32 the methods run too: RAPT / SMART and RAPT shared / SMART per step (the paper's A100 figure: 0.78).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "runs" / "gpu_assets"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")

# dense peak TFLOP/s per precision (NVIDIA's data sheets, without sparsity), by the model that gpu_model() reads
# from the device's name: the whole model, so that an L40 is not taken for an L4 nor an H100 NVL for an SXM H100.
# A model not listed has no MFU (None), rather than another card's figure: the H100 NVL and H200 NVL (whose data
# sheets have given more than one set of figures), a MIG slice (a fraction of the card), any other GPU.
PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},  # SXM ("NVIDIA H200")
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},  # SXM ("NVIDIA H100 80GB HBM3")
    "H100 PCIE": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},  # SXM4 ("NVIDIA A100-SXM4-80GB")
    "A100 PCIE": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},  # the same peaks as the SXM4 card
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0},
    "L40": {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0},
}
PRECISIONS = ("fp32", "tf32", "bf16")

# (encoder, precision, compile mode, methods), most important first
CONFIGS = [
    ("minilm", "fp32", "none", "standard"),
    ("minilm", "tf32", "none", "standard"),
    ("minilm", "bf16", "none", "standard"),
    ("bert-base", "tf32", "none", "standard,smart,rapt,rapt_shared"),
    ("bert-base", "bf16", "none", "standard"),
    ("minilm", "tf32", "reduce-overhead", "standard"),
    ("minilm", "bf16", "reduce-overhead", "standard"),
    ("bert-base", "bf16", "default", "standard"),
    ("bert-base", "fp32", "none", "standard"),
    ("minilm", "tf32", "default", "standard"),
    ("bert-base", "tf32", "default", "standard"),
]

logger = logging.getLogger(__name__)


def gpu_model(device_name: str) -> str:
    """The model in a CUDA device name, upper case, without the vendor, memory size, memory type or SXM form
    factor: "NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA A100-PCIE-40GB" -> "A100 PCIE", "NVIDIA L40" -> "L40"."""
    words = [w for w in re.split(r"[\s_-]+", device_name.upper()) if w]
    return " ".join(w for w in words if w not in ("NVIDIA", "TESLA")
                    and not re.fullmatch(r"\d+GB|HBM\d\w*|SXM\d*", w))


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak of the GPU model named and the precision, from :data:`PEAK_TFLOPS`; None when not listed."""
    peaks = PEAK_TFLOPS.get(gpu_model(device_name))
    return peaks[precision] if peaks else None


def parse_peaks(text: str, precisions: list[str]) -> dict[str, float]:
    """``--peak_tflops``: ``bf16=989,tf32=495,fp32=67`` (TFLOP/s per precision), or a bare number when the
    configurations run use one precision only. A ValueError says what is wrong."""
    if "=" not in text:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--peak_tflops {text}: not a number nor PRECISION=TFLOPS pairs") from None
        if len(precisions) != 1:
            raise ValueError(f"--peak_tflops {text}: a bare number is the peak of one precision, and these "
                             f"configurations run {', '.join(precisions)}; give one per precision, e.g. "
                             f"--peak_tflops bf16=989,tf32=495,fp32=67")
        peaks = {precisions[0]: value}
    else:
        peaks = {}
        for item in (x.strip() for x in text.split(",")):
            name, _, number = item.partition("=")
            name = name.strip()
            if name not in PRECISIONS:
                raise ValueError(f"--peak_tflops {text}: {name!r} is not a precision ({', '.join(PRECISIONS)})")
            if name in peaks:
                raise ValueError(f"--peak_tflops {text}: {name} given twice")
            try:
                peaks[name] = float(number)
            except ValueError:
                raise ValueError(f"--peak_tflops {text}: {number!r} is not a number") from None
    bad = [k for k, v in peaks.items() if not v > 0 or v == float("inf")]
    if bad:
        raise ValueError(f"--peak_tflops {text}: a peak must be a positive number ({', '.join(bad)})")
    return peaks


def prepare(assets: Path, glue_dir: Path, task: str) -> None:
    """The packaged MiniLM's config and tokenizer files and the task's train file, under ``assets``."""
    from data_utils.glue import split_path
    from data_utils.task_def import load_task_defs
    from mt_dnn.model import default_model_path

    t = load_task_defs()[task]  # main() checked the name and the file
    split = t.splits_of("train")[0]
    src = Path(default_model_path())
    (assets / "minilm").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, assets / "minilm" / name)
    dst = split_path(assets / "glue", t, split)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(split_path(glue_dir, t, split), dst)
    print(f"assets for {task} in {assets}")


def train_file(glue_dir: Path, task: str) -> Path:
    """Where the task's train file lies under ``glue_dir`` (the task name is known)."""
    from data_utils.glue import split_path
    from data_utils.task_def import load_task_defs

    t = load_task_defs()[task]
    return split_path(glue_dir, t, t.splits_of("train")[0])


def missing_assets(assets: Path, task: str) -> list[Path]:
    """The files ``run`` reads from ``assets`` that are not there (``prepare`` writes them)."""
    need = [assets / "minilm" / name for name in TOKENIZER_FILES] + [train_file(assets / "glue", task)]
    return [f for f in need if not f.is_file()]


def build_encoders(assets: Path, work: Path, tiny: bool) -> dict[str, str]:
    """Folders of the random-weight encoders (with the packaged tokenizer) that the runs load."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(assets / "minilm", use_fast=True)
    minilm = BertConfig.from_pretrained(assets / "minilm")
    configs = {"minilm": minilm, "bert-base": BertConfig(vocab_size=minilm.vocab_size)}
    if tiny:  # --cpu_smoke: the same code paths on 4-layer encoders (RAPT perturbs up to layer 3)
        configs = {name: BertConfig(vocab_size=minilm.vocab_size, num_hidden_layers=4, hidden_size=h,
                                    num_attention_heads=2, intermediate_size=2 * h)
                   for name, h in (("minilm", 32), ("bert-base", 64))}
    out = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        d = work / name
        BertModel(cfg).save_pretrained(d)
        tokenizer.save_pretrained(d)
        out[name] = str(d)
    return out


def one_config(encoder_dir: str, precision: str, compile_mode: str, methods: str, a: argparse.Namespace,
               out_json: Path) -> dict:
    from experiments.rapt import versus_hf
    from experiments.rapt.speed import METHODS

    ns = argparse.Namespace(
        glue_dir=str(a.assets / "glue"), task=a.task, model=encoder_dir, steps=a.steps, warmup=a.warmup,
        batch_size=a.batch_size, max_seq_len=a.max_seq_len, methods=methods, threads=0, device=a.device,
        precision="bf16" if precision == "bf16" else "fp32", no_tf32=precision == "fp32", cache_dir=str(a.work / "c"),
        out=str(out_json), optimizer_kernel="default", pooling="cls", group_by_length="none", profile=0,
        compile=compile_mode)
    return versus_hf.run(ns, METHODS)


def summarize(r: dict, precision: str, peak: float | None, peak_source: str | None = None) -> dict:
    """ms per step, ours / Trainer, tokens/s and MFU of one configuration's result (MFU against ``peak``, the
    TFLOP/s of this precision; none without one)."""
    tokens = r["mean_padded_tokens_per_batch"]["ours"]
    row = {"ms_ours": r["median_ms"]["standard"], "ms_trainer": r["median_ms"]["hf_trainer"],
           "ours_over_trainer": round(r["ratio_standard_over_hf"], 3), "padded_tokens_per_step": tokens,
           "device_name": r["device_name"], "precision": precision, "peak_tflops": peak,
           "peak_from": peak_source if peak else None}
    for side, ms in (("ours", row["ms_ours"]), ("trainer", row["ms_trainer"])):
        row[f"tokens_per_s_{side}"] = round(tokens / (ms / 1e3))
        if peak:
            row[f"mfu_{side}"] = round(6 * r["params"] * tokens / (ms / 1e3) / (peak * 1e12), 4)
            row[f"mfu_non_embedding_{side}"] = round(6 * r["params_non_embedding"] * tokens / (ms / 1e3) /
                                                     (peak * 1e12), 4)
    row["ratios_to_standard"] = {k: round(v, 3) for k, v in r["ratios_to_standard"].items()}
    med = r["median_ms"]
    for a, b in (("rapt", "smart"), ("rapt_shared", "smart")):
        if a in med and b in med:
            row[f"{a}/{b}"] = round(med[a] / med[b], 3)
    return row


def run(a: argparse.Namespace) -> int:
    from data_utils import atomic

    import torch

    start = time.perf_counter()
    if a.cpu_smoke:
        a.device, a.steps, a.warmup, a.batch_size, a.max_seq_len = "cpu", 2, 1, 4, 32
    elif not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (use --cpu_smoke to check the script on a CPU)")
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    encoders = build_encoders(a.assets, a.work, a.cpu_smoke)
    wanted = a.wanted
    report = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "cpu_smoke": a.cpu_smoke, "steps": a.steps, "warmup": a.warmup, "batch_size": a.batch_size,
              "task": a.task, "weights": "random (the speed of a step does not depend on them)", "configs": {}}
    for enc, precision, compile_mode, methods in wanted:
        key = f"{enc}/{precision}/{compile_mode}"
        if time.perf_counter() - start > a.budget_s:
            report["configs"][key] = {"skipped": f"time budget of {a.budget_s:.0f} s spent"}
            continue
        t0 = time.perf_counter()
        try:
            r = one_config(encoders[enc], precision, compile_mode, methods, a,
                           a.work / "configs" / f"{enc}_{precision}_{compile_mode}.json".replace("-", "_"))
            given = a.peaks.get(precision)
            peak = given or peak_tflops(r["device_name"], precision)
            row = summarize(r, precision, peak, "--peak_tflops" if given else "PEAK_TFLOPS")
            row["run"] = {k: r[k] for k in ("median_ms", "median_cpu_ms", "ms", "kernel_used", "params",
                                            "params_non_embedding", "mean_tokens_per_batch", "tf32", "compile")}
        except Exception as exc:  # one configuration failing (a compile error) must not lose the others
            logger.exception("%s failed", key)
            row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        report["configs"][key] = row
        atomic.write_json(a.out / "gpu_speed.json", report)
        print(f"{key}: {json.dumps(row)}", flush=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    atomic.write_json(a.out / "gpu_speed.json", report)
    print(f"report: {a.out / 'gpu_speed.json'}")
    return 0 if all("error" not in r for r in report["configs"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_speed", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("prepare", "run"))
    p.add_argument("--assets", type=Path, default=ASSETS)
    p.add_argument("--glue_dir", type=Path, default=Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" /
                                                                          "glue_data")), help="for prepare")
    p.add_argument("--task", default="rte")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_speed")
    p.add_argument("--work", type=Path, default=None, help="encoders and feature cache (default: OUT/../work)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--budget_s", type=float, default=480.0, help="start no configuration after this many seconds")
    p.add_argument("--only", default="", help="comma-separated encoder/precision/compile keys, e.g. "
                                               "minilm/tf32/reduce-overhead (default: all, in order)")
    p.add_argument("--peak_tflops", default=None,
                   help="the GPU's dense peak TFLOP/s per precision for MFU, e.g. bf16=989,tf32=495,fp32=67 (a "
                        "precision not given: PEAK_TFLOPS's figure); a bare number only when one precision runs")
    p.add_argument("--cpu_smoke", action="store_true", help="every configuration on the CPU with 4-layer "
                                                            "encoders and 2 steps: checks that the script runs")
    a = p.parse_args(argv)
    from data_utils.task_def import load_task_defs
    from mt_dnn.cli_utils import setup_logging

    tasks = load_task_defs()
    if a.task not in tasks:
        p.error(f"--task {a.task}: unknown; choose from {', '.join(sorted(tasks))}")
    if a.what == "prepare":
        if not train_file(a.glue_dir, a.task).is_file():
            p.error(f"--glue_dir {a.glue_dir}: no {train_file(a.glue_dir, a.task)} (the task's train file; set "
                    "--glue_dir or GLUE_DIR)")
        setup_logging()
        prepare(a.assets, a.glue_dir, a.task)
        return 0
    missing = missing_assets(a.assets, a.task)
    if missing:
        p.error(f"--assets {a.assets}: no {missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
                f"; run `python -m benchmarks.gpu_speed prepare --assets {a.assets} --task {a.task}` first")
    keys = {f"{c[0]}/{c[1]}/{c[2]}": c for c in CONFIGS}
    only = [k for k in a.only.split(",") if k]
    unknown = [k for k in only if k not in keys]
    if unknown:
        p.error(f"--only {','.join(unknown)}: no such configuration; choose from {', '.join(keys)}")
    a.wanted = [c for k, c in keys.items() if not only or k in only]
    for flag in ("steps", "batch_size", "max_seq_len"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} {getattr(a, flag)}: must be at least 1")
    if a.warmup < 0:
        p.error(f"--warmup {a.warmup}: must be at least 0")
    try:
        a.peaks = parse_peaks(a.peak_tflops, sorted({c[1] for c in a.wanted})) if a.peak_tflops else {}
    except ValueError as exc:
        p.error(str(exc))
    setup_logging()
    a.work = a.work or a.out.parent / f"{a.out.name}_work"
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
