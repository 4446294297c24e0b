"""Process-group helpers: joining torchrun's group, decisions made on rank 0 and shared, means over ranks."""
from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch

from data_utils.task_def import ConfigError

T = TypeVar("T")


def init_distributed(device: str) -> tuple[int, int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1: nccl on GPUs, gloo on CPU. Returns (rank, world, local)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        gpus = torch.cuda.device_count() if use_cuda else 0
        if use_cuda and local_world > gpus:
            # each process trains on its own GPU (cuda:LOCAL_RANK); every rank sees the same counts, so all stop here
            raise ConfigError(f"torchrun started {local_world} processes on this machine, which has {gpus} GPU(s): "
                              f"start one process per GPU (--nproc_per_node {gpus}), or train on CPU with --device cpu")
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def on_main(fn: Callable[[], T], rank: int, world_size: int) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or its ConfigError to raise: all ranks go on, or
    all stop with the same one-line error (none is left waiting in a collective)."""
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except ConfigError as exc:
            error = str(exc)
    if world_size > 1:
        box = [(result, error)]
        torch.distributed.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise ConfigError(error)
    return result


def mean_over_ranks(values, world_size: int, device: torch.device) -> list[float]:
    """The mean of each value (floats, or a 1-dim tensor) over the ranks, as floats (every rank must call it, with
    the same number of values)."""
    if world_size == 1:
        return values.detach().cpu().double().tolist() if torch.is_tensor(values) else [float(v) for v in values]
    if torch.is_tensor(values):
        t = values.detach().to(device=device, dtype=torch.float64, copy=True)
    else:
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / world_size).tolist()


def gather(obj, world_size: int) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world_size == 1:
        return [obj]
    out: list = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def once_per_node(fn: Callable[[], T], world_size: int) -> T:
    """``fn()`` on every rank, the first rank of each node (LOCAL_RANK 0) first while the node's other ranks wait.

    For work whose result the first rank leaves on disk (the feature cache): it tokenizes and writes the cache
    once per node, and the other ranks, released after it, read that cache. The wait is one collective
    (``all_gather_object``: a barrier that also carries each first rank's error), so a user error there stops
    every rank with the same one-line error instead of leaving them waiting; any other failure stops the others
    with a RuntimeError naming it.
    """
    if world_size == 1:
        return fn()
    from data_utils.glue import DataError

    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    result, failure, error = None, None, None
    if first:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - shared with the waiting ranks, then raised here unchanged
            failure = exc
            error = (type(exc).__name__, (str(exc).strip().splitlines() or [""])[0])
    errors = gather(error, world_size)
    if failure is not None:
        raise failure
    for kind, message in (e for e in errors if e is not None):
        if kind in ("ConfigError", "DataError"):
            raise (ConfigError if kind == "ConfigError" else DataError)(message)
        raise RuntimeError(f"another rank failed while preparing the data: {kind}: {message}")
    return fn() if not first else result
