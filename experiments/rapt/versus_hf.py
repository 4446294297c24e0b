"""Our training step against plain ``transformers.Trainer``, side by side in one process, step by step.

    python -m experiments.rapt.speed --against hf-trainer --glue_dir $GLUE_DIR --task rte --threads 2 \
        --warmup 3 --steps 30 --optimizer_kernel default     # -> results/speed_vs_hf_rte_default.json

Both sides train the same encoder (default: the packaged MiniLM) on the same real batches, in the same order
(batch 32 of the task's train split, dynamic padding, ``--max_seq_len``), with AdamW at the same learning rate,
weight decay, linear warm-up and gradient clipping, in fp32 unless ``--precision`` says otherwise:

- ours: one ``mt_dnn.trainer.Trainer`` per method (standard, and --methods such as rapt, smart, r3f), each
  timed over one iteration of its loop (``Trainer._step``: collate, forward, backward, clip, optimizer,
  scheduler, bookkeeping), with evaluation, checkpoints and logging off;
- the Hugging Face side: ``Trainer.train()`` on ``AutoModelForSequenceClassification`` (its [CLS] pooler and
  classifier), fed by its own ``DataCollatorWithPadding`` over the same rows in the same order (sequential
  sampling). It runs in a thread that a callback holds at the end of every step, so that its steps and ours
  alternate; a step is timed from the moment the thread is let go to the end of the next step (fetching and
  collating the batch, training_step, clip, optimizer, scheduler, its loop bookkeeping), with evaluation,
  saving and logging off. ``hf_compute`` in the JSON is ``on_step_begin`` to ``on_step_end`` only (no batch
  fetch or collation).

Steps rotate their order every round, so machine noise hits all sides alike; ``--warmup`` rounds come first,
untimed. ``--optimizer_kernel`` picks the AdamW kernel on both sides: ``default`` leaves each side its own default
(ours: ``mt_dnn.runtime.build_optimizer``; Trainer: ``TrainingArguments.optim``), ``forloop``, ``foreach`` and
``fused`` force that kernel on both; ``--trainer_kernel`` gives the Trainer another one. The JSON records which
kernel each side ran, the median ms per step, the median of per-step ratios (each round's two steps trained on the
same batch), the ratios of the methods to standard, the mean real and padded tokens of the timed batches (not the
warm-up or profiled ones), the device (a GPU's name; on a CPU its model, from ``/proc/cpuinfo`` on Linux), the
torch and transformers versions, the thread count and the load average before and after. Each
step is also timed in CPU seconds of the process (the sides never run at once): on a machine shared with other
jobs the wall clock counts the time they held the cores, the CPU time does not (with ``--threads 1`` it is the
step's own work; with more threads it also counts the threads' spin-waiting).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from data_utils import atomic
from data_utils.task_def import ConfigError

logger = logging.getLogger(__name__)

KERNELS = ("default", "forloop", "foreach", "fused")
FORCED = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def check_args(args: argparse.Namespace, methods: dict) -> list[str]:
    """The method names of ``--methods``, after checking the flags that would otherwise fail after the model is
    built (a task or method name that does not exist, no method, no timed step): a one-line ConfigError."""
    from data_utils.task_def import load_task_defs

    tasks = load_task_defs()
    if args.task not in tasks:
        raise ConfigError(f"--task {args.task}: unknown; choose from {', '.join(sorted(tasks))}")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--methods {args.methods!r}: no method; choose from {', '.join(methods)}")
    unknown = [m for m in names if m not in methods]
    if unknown:
        raise ConfigError(f"--methods {','.join(unknown)}: unknown; choose from {', '.join(methods)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods {args.methods}: a method is named twice")
    for flag, low in (("steps", 1), ("warmup", 0), ("batch_size", 1), ("threads", 0), ("profile", 0)):
        value = getattr(args, flag, low)
        if value < low:
            raise ConfigError(f"--{flag} {value}: must be at least {low}")
    return names


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name (Linux: the first ``model name`` of ``/proc/cpuinfo``); elsewhere
    ``platform.processor()``, else the machine type (``x86_64``), else "cpu"."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA (``torch.cuda.get_device_name``); else the CPU's model (:func:`cpu_model`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def kernel_of(opt: torch.optim.Optimizer) -> str:
    """The AdamW kernel ``opt`` runs: fused, foreach or forloop (torch's pick when the flags were left unset)."""
    group = opt.param_groups[0]
    if group.get("fused"):
        return "fused"
    if group.get("foreach") is None:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        _, foreach = _default_to_fused_or_foreach([p for g in opt.param_groups for p in g["params"]], False, False)
        return "foreach" if foreach else "forloop"
    return "foreach" if group["foreach"] else "forloop"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profiler_activities(device: torch.device) -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    return acts + [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else acts


def profile_table(prof, device: torch.device, rows: int = 30) -> str:
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def clocks() -> tuple[float, float]:
    """(wall clock, this process's CPU time). The sides never run at once, so a side's CPU time is the process's
    over its step: unlike the wall clock, it does not count the time other programs held the cores."""
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    t = clocks()
    return t[0] - t0[0], t[1] - t0[1]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---- our side ------------------------------------------------------------------------------------------------

class Ours:
    """One ``mt_dnn.trainer.Trainer`` of one method, ready to run single loop iterations on given rows."""

    def __init__(self, cfg, kernel: str):
        from tqdm import tqdm

        from mt_dnn.trainer import Trainer

        self.trainer = tr = Trainer(cfg)
        tr.setup()
        if kernel != "default":  # the same parameter groups (decay / no decay), another kernel
            from transformers import get_linear_schedule_with_warmup

            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in tr.optimizer.param_groups]
            tr.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, **FORCED[kernel])
            tr.scheduler = get_linear_schedule_with_warmup(tr.optimizer, int(cfg.warmup * tr.total_steps),
                                                           tr.total_steps)
        tr.model.train()
        tr.last_logs = {}
        tr.bar = tqdm(disable=True)
        self.kernel = kernel_of(tr.optimizer)

    def step(self, task: str, rows: list[int]) -> tuple[float, float]:
        """(wall, CPU) seconds of one loop iteration of our trainer on ``rows`` (collate included)."""
        tr = self.trainer
        _sync(tr.device)
        t0 = clocks()
        tr._step([(task, rows)])
        _sync(tr.device)
        return since(t0)

    def close(self) -> None:
        self.trainer.close()


# ---- the Hugging Face side ---------------------------------------------------------------------------------

class HFSide:
    """``transformers.Trainer.train()`` in a thread that runs one step each time :meth:`step` lets it go."""

    def __init__(self, model_path: str, feats, order: list[int], num_labels: int, lr: float, weight_decay: float,
                 warmup: float, clip: float, total: int, batch_size: int, kernel: str, precision: str,
                 device: torch.device, tf32: bool, compile_mode: str, work: str, threads: int):
        from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                                  Trainer, TrainerCallback, TrainingArguments)

        side = self
        self.device = device
        self.threads = threads
        self.go = threading.Semaphore(0)
        self.done = threading.Semaphore(0)
        self.times: list[tuple[float, float]] = []  # (wall, CPU) seconds of each step
        self.compute: list[float] = []
        self.error: BaseException | None = None
        self.profile_request = 0  # profile this many of the next steps (torch.profiler, in the Trainer's thread)
        self.profiler = None
        self._profile_left = 0
        self.thread_threads: int | None = None
        self._t_release = (0.0, 0.0)
        self._t_begin = 0.0

        class Lockstep(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                if side.threads:
                    torch.set_num_threads(side.threads)
                side.thread_threads = torch.get_num_threads()
                side.go.acquire()
                side._t_release = clocks()

            def on_step_begin(self, args, state, control, **kw):
                side._t_begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync(side.device)
                side.times.append(since(side._t_release))
                side.compute.append(time.perf_counter() - side._t_begin)
                if side.profiler is not None and side._profile_left:
                    side._profile_left -= 1
                    if not side._profile_left:
                        side.profiler.stop()
                side.done.release()
                side.go.acquire()
                if side.profile_request and side.profiler is None:
                    side._profile_left, side.profile_request = side.profile_request, 0
                    side.profiler = torch.profiler.profile(activities=profiler_activities(side.device))
                    side.profiler.start()
                side._t_release = clocks()

        tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
        rows = []  # what a tokenized HF dataset holds: lists of ids, token types, attention mask, label
        for i in order:
            ids = feats.input_ids[i].tolist()
            row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": feats.labels[i]}
            if feats.types is not None:
                row["token_type_ids"] = feats.token_type_ids[i].tolist()
            rows.append(row)
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
        optim = {"default": {}, "fused": {"optim": "adamw_torch_fused"}}.get(kernel, {"optim": "adamw_torch"})
        known = {f.name for f in dataclasses.fields(TrainingArguments)}  # a few names differ between versions
        version_kw = {"warmup_steps": warmup}  # below 1: a fraction of the steps
        if "train_sampling_strategy" in known:
            version_kw["train_sampling_strategy"] = "sequential"
        args = TrainingArguments(
            output_dir=work, per_device_train_batch_size=batch_size, max_steps=total, learning_rate=lr,
            weight_decay=weight_decay, max_grad_norm=clip, lr_scheduler_type="linear", **version_kw,
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            seed=1, dataloader_num_workers=0, use_cpu=device.type == "cpu",
            bf16=precision == "bf16", fp16=precision == "fp16", tf32=(tf32 if device.type == "cuda" else None),
            torch_compile=compile_mode != "none",
            **({"torch_compile_mode": compile_mode} if compile_mode not in ("none", "default") else {}), **optim)
        pad = DataCollatorWithPadding(tokenizer)
        self.shapes: list[tuple[int, ...]] = []  # (B, T) of each batch the Trainer collated

        def collate(features):
            batch = pad(features)
            self.shapes.append(tuple(batch["input_ids"].shape))
            return batch

        self.trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                               callbacks=[Lockstep()])
        if "train_sampling_strategy" not in known:  # older transformers: a random sampler unless told otherwise
            from torch.utils.data import SequentialSampler

            self.trainer._get_train_sampler = lambda *a, **k: SequentialSampler(rows)
        self.trainer.create_optimizer()
        if kernel == "foreach":  # no optim name asks for it: set on the optimizer the Trainer built (no checks apply)
            for g in self.trainer.optimizer.param_groups:
                g["foreach"] = True
        self.kernel = kernel_of(self.trainer.optimizer)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.trainer.train()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.done.release()

    def step(self) -> tuple[float, float]:
        """Let the Trainer run its next step; (wall, CPU) seconds from letting it go to that step's end."""
        n = len(self.times)
        self.go.release()
        self.done.acquire()
        if self.error is not None or len(self.times) == n:
            raise RuntimeError(f"transformers.Trainer stopped: {self.error!r}")
        return self.times[-1]

    def close(self) -> None:
        self.go.release()
        self.thread.join(timeout=60)


def profile_sides(sides: dict[str, Ours], hf: HFSide, batches: list, device: torch.device) -> dict[str, str]:
    """torch.profiler tables (ops by self time) of ``len(batches)`` more steps of every side."""
    tables = {}
    for name, side in sides.items():
        with torch.profiler.profile(activities=profiler_activities(device)) as prof:
            for t, rows in batches:
                side.step(t, rows)
        tables[name] = profile_table(prof, device)
    hf.profile_request = len(batches)
    for _ in batches:
        hf.step()
    tables["hf_trainer"] = profile_table(hf.profiler, device)
    return tables


# ---- the run ---------------------------------------------------------------------------------------------------

def full_batches(sampler, n: int) -> list[tuple[str, list[int]]]:
    """The first ``n`` full batches of the sampler's epochs (a short last batch would shift the Trainer's); the
    batches of an epoch come in random order, so they are a fair sample of its batches."""
    out: list[tuple[str, list[int]]] = []
    epoch = 0
    while len(out) < n:
        out += [(t, r.tolist()) for t, r in sampler.epoch_plan(epoch) if len(r) == sampler.batch_size]
        epoch += 1
    return out[:n]


def run(args: argparse.Namespace, methods: dict, names: list[str] | None = None) -> dict:
    """Build every side, run the interleaved rounds, write and return the JSON result (see module doc).
    ``names``: the methods of ``--methods`` where the caller has already checked the flags (:func:`check_args`)."""
    from data_utils.batching import MultiTaskSampler
    from data_utils.task_def import load_task_defs
    from mt_dnn.config import TrainConfig
    from mt_dnn.model import DEFAULT_MODEL, resolve_model
    from mt_dnn.runtime import pick_device

    names = ["standard"] + [m for m in (check_args(args, methods) if names is None else names) if m != "standard"]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model_path = resolve_model(args.model)
    task = load_task_defs()[args.task]
    total = args.warmup + args.steps + args.profile
    trainer_kernel = args.optimizer_kernel if getattr(args, "trainer_kernel", "same") == "same" else args.trainer_kernel
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="speed-vs-hf-") as work:
        sides: dict[str, Ours] = {}
        for name in names:
            method, opts = methods[name]
            cfg = TrainConfig(tasks=args.task, method=method, method_options=dict(opts), glue_dir=args.glue_dir,
                              output_dir=str(Path(work) / name), model=args.model, cache_dir=args.cache_dir,
                              max_seq_len=args.max_seq_len, pooling=args.pooling, max_steps=total,
                              batch_size=args.batch_size, no_eval=True, precision=args.precision,
                              device=str(device), tf32=not args.no_tf32, compile=args.compile, log_every=10**9,
                              seed=1)
            sides[name] = Ours(cfg, args.optimizer_kernel)
        ref = sides["standard"].trainer
        feats = ref.train_data[task.name]
        sampler = MultiTaskSampler({task.name: len(feats)}, args.batch_size, seed=1)
        plain = full_batches(sampler, total)
        grouped = plain if args.group_by_length == "none" else full_batches(  # as --group_by_length plans them
            MultiTaskSampler({task.name: len(feats)}, args.batch_size, seed=1, lengths={task.name: feats.row_lengths}),
            total)
        batches = grouped if args.group_by_length in ("ours", "both") else plain
        hf_batches = grouped if args.group_by_length == "both" else plain
        hf = HFSide(model_path, feats, [i for _, rows in hf_batches for i in rows], task.num_outputs, ref.cfg.lr,
                    ref.cfg.weight_decay,
                    ref.cfg.warmup, ref.cfg.clip, total, args.batch_size, trainer_kernel, args.precision,
                    device, not args.no_tf32, args.compile, str(Path(work) / "hf"), args.threads)
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in names + ["hf_trainer"]}
        order = names + ["hf_trainer"]
        profiles: dict[str, str] = {}
        try:
            for i, (t, rows) in enumerate(batches[:args.warmup + args.steps]):
                k = i % len(order)
                for name in order[k:] + order[:k]:
                    dt = hf.step() if name == "hf_trainer" else sides[name].step(t, rows)
                    if i >= args.warmup:
                        times[name].append(dt)
                logger.info("round %d/%d  %s", i + 1, total,
                            "  ".join(f"{n} {v[-1][0] * 1e3:.0f}ms" for n, v in times.items() if v))
            if args.profile:
                profiles = profile_sides(sides, hf, batches[args.warmup + args.steps:], device)
        finally:
            hf.close()
            for s in sides.values():
                s.close()
    load_after = load_average()
    want = [(len(r), int(feats.row_lengths[r].max())) for _, r in hf_batches[:len(hf.shapes)]]
    if hf.shapes != want:  # the comparison would not be on the same batches
        raise RuntimeError(f"the Trainer's batches {hf.shapes[:4]}... are not the ones given {want[:4]}...")
    med = {n: statistics.median(w for w, _ in v) for n, v in times.items()}
    cpu = {n: statistics.median(c for _, c in v) for n, v in times.items()}
    timed = slice(args.warmup, args.warmup + args.steps)  # the batches the medians are of (not warm-up, profile)
    stats = {n: [int(feats.row_lengths[r].max()) * len(r) for _, r in b[timed]] for n, b in (("ours", batches),
                                                                                             ("hf", hf_batches))}
    paired = [a[0] / b[0] for a, b in zip(times["standard"], times["hf_trainer"])]
    result = {
        "against": "hf-trainer", "task": args.task, "model": args.model or DEFAULT_MODEL,
        "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
        "pooling_ours": args.pooling, "precision": args.precision, "device": str(device),
        "device_name": device_name(device),
        "tf32": device.type == "cuda" and not args.no_tf32, "compile": args.compile,
        "threads": torch.get_num_threads(), "threads_hf_thread": hf.thread_threads,
        "optimizer_kernel": args.optimizer_kernel, "trainer_kernel": trainer_kernel,
        "kernel_used": {"ours": sides["standard"].kernel, "hf_trainer": hf.kernel},
        "params": sum(p.numel() for p in ref.model.parameters()),
        "params_non_embedding": sum(p.numel() for n, p in ref.model.named_parameters() if ".embeddings." not in n),
        "lr": ref.cfg.lr, "weight_decay": ref.cfg.weight_decay, "lr_warmup": ref.cfg.warmup, "clip": ref.cfg.clip,
        "torch": torch.__version__, "transformers": transformers_version(),
        "load_average_before": load_before, "load_average_after": load_after,
        "group_by_length": args.group_by_length,
        "mean_padded_tokens_per_batch": {n: statistics.mean(v) for n, v in stats.items()},
        "mean_tokens_per_batch": statistics.mean(int(feats.row_lengths[r].sum()) for _, r in batches[timed]),
        "median_ms": {n: round(v * 1e3, 2) for n, v in med.items()},
        "hf_compute_median_ms": round(statistics.median(hf.compute[timed]) * 1e3, 2),
        "median_cpu_ms": {n: round(v * 1e3, 2) for n, v in cpu.items()},
        "ms": {n: [round(w * 1e3, 2) for w, _ in v] for n, v in times.items()},
        "cpu_ms": {n: [round(c * 1e3, 2) for _, c in v] for n, v in times.items()},
        "ratio_standard_over_hf": med["standard"] / med["hf_trainer"],
        "median_paired_ratio_standard_over_hf": statistics.median(paired),
        "cpu_ratio_standard_over_hf": cpu["standard"] / cpu["hf_trainer"],
        "ratios_to_standard": {n: med[n] / med["standard"] for n in names if n != "standard"},
        "cpu_ratios_to_standard": {n: cpu[n] / cpu["standard"] for n in names if n != "standard"},
    }
    if "rapt" in med and "smart" in med:
        result["ratios_to_standard"]["rapt/smart"] = med["rapt"] / med["smart"]
        result["cpu_ratios_to_standard"]["rapt/smart"] = cpu["rapt"] / cpu["smart"]
    out = Path(args.out or f"experiments/rapt/results/speed_vs_hf_{args.task}_{args.optimizer_kernel}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out, result)
    if profiles:
        prof_out = out.with_name(out.stem + "_profile.txt")
        atomic.write_text(prof_out, "".join(f"== {n}: {args.profile} steps ==\n{t}\n\n" for n, t in profiles.items()))
        print(f"profiles of {args.profile} steps per side written to {prof_out}")
    print(f"ms per step, median of {args.steps} interleaved rounds ({args.task}, batch {args.batch_size}, "
          f"{result['device_name']}, {args.precision}, {result['threads']} threads, AdamW kernel ours "
          f"{result['kernel_used']['ours']} / Trainer {result['kernel_used']['hf_trainer']}; load average "
          f"{load_before} -> {load_after}):")
    print(f"  {'':12s} {'wall':>9s} {'CPU':>9s}")
    for n in order:
        print(f"  {n:12s} {result['median_ms'][n]:9.1f} {result['median_cpu_ms'][n]:9.1f}")
    print(f"  {'ours/Trainer':22s} {result['ratio_standard_over_hf']:.3f} {result['cpu_ratio_standard_over_hf']:.3f}"
          f"  (wall, CPU; median of per-round wall ratios {result['median_paired_ratio_standard_over_hf']:.3f})")
    for k, v in result["ratios_to_standard"].items():
        print(f"  {k + ('' if '/' in k else '/standard'):22s} {v:.3f} {result['cpu_ratios_to_standard'][k]:.3f}")
    print(f"written to {out}")
    return result
