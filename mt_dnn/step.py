"""The forward pieces the trainer runs: the whole regularized step as one module, and batched prediction."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn

from data_utils.batching import collate, eval_batches
from data_utils.features import Features
from data_utils.glue import DataError
from mt_dnn import losses
from mt_dnn.model import MultiTaskModel
from mt_dnn.perturbation import Regularizer
from mt_dnn.runtime import autocast, to_device


class TrainStep(nn.Module):
    """The whole regularized step as one module call (one forward per backward under DDP).

    forward(batch) -> (loss, task_loss, reg_loss, logs): loss = task_loss + alpha * reg_loss; the last three
    detached, and ``logs`` the regularizer's (floats or 0-dim tensors).
    """

    def __init__(self, model: MultiTaskModel, reg: Regularizer):
        super().__init__()
        self.model = model
        self.reg = reg

    def forward(self, batch: dict):
        task = self.model.task_defs[batch["task"]]
        with self.reg.clean_pass(self.model, batch):
            logits = self.model(batch)
        task_loss = losses.task_loss(task, logits, batch["labels"])
        reg_loss, logs = self.reg(self.model, batch, logits)
        return task_loss + self.reg.alpha * reg_loss, task_loss.detach(), reg_loss.detach(), logs


# padded tokens per evaluation batch on a CPU, where a batch of ~2k tokens keeps a layer's activations in the caches:
# the packaged MiniLM on 200 RTE test rows, one thread, rows per CPU second (median of 3): 128-row batches 31-32,
# 8192 tokens 32, 4096 tokens 40, 2048 tokens 44, 1024 tokens 43. On a GPU only --eval_batch_size caps a batch.
CPU_EVAL_TOKENS = 2048


def eval_token_budget(device: torch.device) -> int | None:
    """Default padded-token budget of an evaluation batch on ``device`` (None: only the row cap)."""
    return CPU_EVAL_TOKENS if device.type == "cpu" else None


def batch_logits(model: MultiTaskModel, features: Features, batch_size: int, device: torch.device, pad_id: int,
                 precision: str = "fp32", rank: int = 0, world_size: int = 1,
                 max_tokens: int | None | str = "auto") -> Iterator[tuple[list[int], torch.Tensor]]:
    """(rows, logits (B, C) in fp32) for each of this rank's evaluation batches of ``features`` (rows
    rank::world_size; :func:`data_utils.batching.eval_batches`: length-sorted within chunks, at most
    ``batch_size`` rows and ``max_tokens`` padded tokens; ``"auto"``: :func:`eval_token_budget`), under
    ``torch.inference_mode`` and with the model in eval mode; its mode is restored at the end."""
    was_training = model.training
    model.eval()
    regression = model.task_defs[features.task].type == "regression"
    budget = eval_token_budget(device) if max_tokens == "auto" else max_tokens
    try:
        for rows in eval_batches(features, batch_size, rank, world_size, budget):
            batch = to_device(collate(features, rows, pad_id, regression), device)
            with torch.inference_mode(), autocast(device, precision):
                logits = model(batch).float()
            yield rows, logits
    finally:
        model.train(was_training)


def predict(model: MultiTaskModel, features: Features, batch_size: int, device: torch.device, pad_id: int,
            precision: str = "fp32", rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Predictions for every row of ``features`` in file order: class ids (N,) or scores (N,).

    Rows are batched by length (little padding; :func:`batch_logits`); no autograd; the model is put in eval
    mode. Under DDP each rank predicts rows rank::world_size and the shards are gathered, so every row is
    predicted exactly once. A row whose output is not finite (a broken model, an fp16 overflow) is a
    :class:`DataError` on every rank, never a class id: argmax of NaN logits would read as class 0.
    """
    regression = model.task_defs[features.task].type == "regression"
    out = np.zeros(len(features), dtype=np.float64 if regression else np.int64)
    mine: list[int] = []
    broken: list[int] = []  # this rank's rows with a non-finite output
    for rows, logits in batch_logits(model, features, batch_size, device, pad_id, precision, rank, world_size):
        finite = torch.isfinite(logits).all(-1).cpu().numpy()
        out[rows] = (logits.squeeze(-1) if regression else logits.argmax(-1)).cpu().numpy()
        mine.extend(rows)
        broken.extend(int(r) for r, ok in zip(rows, finite) if not ok)
    if world_size > 1:
        shards: list = [None] * world_size
        torch.distributed.all_gather_object(shards, (mine, out[mine].tolist(), broken))
        broken = sorted(r for _, _, bad in shards for r in bad)
        for rows, values, _ in shards:
            out[rows] = values
    if broken:
        raise DataError(f"{features.task} {features.split}: the model's output is not a finite number for "
                        f"{len(broken)} of {len(features)} row(s) (first: row {min(broken)}); the model is broken "
                        "(or its precision overflowed): no score or prediction is made from it")
    return out
