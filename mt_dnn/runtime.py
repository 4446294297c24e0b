"""Device-level pieces of a training step: the device, autocast, TF32, the optimizer, DDP, and host reads.

Every CUDA-only setting sits behind a ``device.type == "cuda"`` check, so the CPU path (the one the tests run)
is unchanged by them. On a GPU the defaults are the fast ones: TF32 matmuls (``--no_tf32`` turns them off) and
the fused AdamW kernel.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def build_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW (the fused CUDA kernel when every parameter is on a GPU) or Adamax, over parameter ``groups``."""
    if name == "adamax":
        return torch.optim.Adamax(groups, lr=lr)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, **({"fused": True} if on_cuda else {}))


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
