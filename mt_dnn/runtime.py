"""Device-level pieces of a training step: the device, autocast, TF32, the optimizer, DDP, and host reads.

Every CUDA-only setting sits behind a ``device.type == "cuda"`` check, so the CPU path (the one the tests run)
is unchanged by them. On a GPU the defaults are the fast ones: TF32 matmuls (``--no_tf32`` turns them off). AdamW
uses the fused kernel on the CPU and on GPUs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from data_utils.task_def import ConfigError
from mt_dnn.flags import Flag

logger = logging.getLogger(__name__)

# a setting of the process, not of the run: not in config.json, no part of what --resume compares or of a
# campaign folder's name. Like moving a run to another device, another thread count sums in another order: the
# loss differs in the last digits (measured: 0.69535427 with 1 thread, 0.69535430 with 2, after 6 RAPT steps)
THREADS = Flag("threads", int, None, "CPU threads for torch's kernels (default: $OMP_NUM_THREADS when set, else "
                                     "the cores this process may use, divided among torchrun's processes on this "
                                     "machine; on a shared machine pass fewer). Another count changes results in "
                                     "the last digits only", optional=True, bounds=((">=", 1),))


def default_threads() -> int:
    """$OMP_NUM_THREADS when set, else the cores this process may use (its CPU affinity) divided among the
    processes torchrun started on this machine ($LOCAL_WORLD_SIZE), at least 1."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, cores // (int(local) if local.isdigit() and int(local) > 0 else 1))


def set_threads(threads: int | None) -> int:
    """torch's intra-op thread count: ``threads``, or :func:`default_threads` when None; returns it."""
    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


DEVICE_TYPES = ("cpu", "cuda", "mps")


def pick_device(name: str) -> torch.device:
    """The device ``name`` means: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``. A name of no such device, or a device this machine or torch build lacks, is a one-line
    :class:`ConfigError` (every command and :func:`mt_dnn.load_run` choose their device here)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"device {name!r}: not a device name; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
            raise ConfigError(f"device {name!r}: {why} (torch {torch.__version__}); use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS (Apple GPU) is not available here; use cpu or auto")
    return device


def device_label(device: torch.device) -> str:
    """What a run trained on, as run records name it: ``cpu``, ``mps``, or ``cuda (<GPU name>)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def autocast(device: torch.device, precision: str):
    """torch.amp autocast for bf16/fp16; a no-op context for fp32."""
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def set_tf32(device: torch.device, tf32: bool) -> str | None:
    """On CUDA, let float32 matmuls use TF32 (``tf32``) or keep them full fp32; returns what was set, for the log.

    TF32 keeps fp32's range with a 10-bit mantissa inside the matmul: several times faster on Ampere and newer,
    with results that differ from full fp32 in the last digits. CPU matmuls are not affected (None).
    """
    if device.type != "cuda":
        return None
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return "TF32 matmuls (--no_tf32 for full fp32)" if tf32 else "full fp32 matmuls (--no_tf32)"


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs (float parameters)


def build_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW or Adamax over parameter ``groups``.

    AdamW uses torch's fused kernel when every parameter is a float tensor on the CPU or one GPU type: one pass
    over each parameter instead of a chain of elementwise ops. On the CPU it updates the packaged MiniLM's
    22.6M parameters about 10x faster than the default for-loop kernel (``benchmarks``/RESULTS give the
    measurement). It computes the same update; results differ from the for-loop kernel in the last bits.
    """
    if name == "adamax":
        return torch.optim.Adamax(groups, lr=lr)
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    fused = (len(devices) == 1 and devices <= set(FUSED_DEVICES)
             and all(p.is_floating_point() for p in params))
    return torch.optim.AdamW(groups, lr=lr, **({"fused": True} if fused else {}))


def compile_model(model: nn.Module, mode: str) -> None:
    """``torch.compile`` ``model`` in place (``--compile``; ``none``: nothing), so its parameter names, hooks and
    saved files stay those of the plain model. Dropout keeps drawing torch's own masks (inductor's
    ``fallback_random``), so a compiled run's losses are the plain run's up to float error."""
    if mode == "none":
        return
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    model.compile(mode=None if mode == "default" else mode)


def wrap_ddp(module: nn.Module, device: torch.device, num_heads: int) -> nn.Module:
    """``module`` under DistributedDataParallel.

    A multi-task model has one head per task and each batch is one task's, so the other heads get no gradient
    in a step: DDP must then look for unused parameters after each forward (``find_unused_parameters``). With a
    single head every parameter is used in every step, and that search is skipped (it costs a graph traversal
    per step and makes DDP warn).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=num_heads > 1)


def host_floats(values: Mapping[str, object]) -> dict[str, float]:
    """``values`` (floats, ints or 0-dim tensors) as Python floats, with one device-to-host copy for all tensors."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in values.items() if not torch.is_tensor(v)}
    if keys:
        stacked = torch.stack([values[k].detach().reshape(()).double() for k in keys]).cpu().tolist()
        out.update(zip(keys, stacked))
    return {k: out[k] for k in values}


def step_verdict(flags: Iterable[torch.Tensor], stop: bool, device: torch.device,
                 world_size: int) -> tuple[bool, bool]:
    """One host read per step: (every flag (bool tensors) is True on every rank, some rank asked to stop).
    Under DDP both come from one all_reduce, so every rank takes the same decision at the same step."""
    ok = torch.ones((), dtype=torch.bool, device=device)
    for f in flags:
        ok = ok & f.to(device)
    # MIN over ranks of [all finite, not stopping]: both stay 1 only if they are 1 on every rank
    verdict = torch.stack([ok.float(), torch.tensor(0.0 if stop else 1.0, device=device)])
    if world_size > 1:  # every rank must agree, or the ranks' weights would drift apart
        torch.distributed.all_reduce(verdict, op=torch.distributed.ReduceOp.MIN)
    finite, go_on = verdict.tolist()
    return finite > 0, go_on == 0
