"""Batches as dicts, dynamic padding, and the multi-task (optionally distributed) batch sampler.

A batch is ``{"task": str, "input_ids": (B, T), "attention_mask": (B, T), "token_type_ids": (B, T)
(where the tokenizer makes them), "labels": (B,) long or float (train/dev)}``, padded to the longest row
of the batch, never to ``max_seq_len``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from data_utils.features import Features

logger = logging.getLogger(__name__)

SAMPLING_CHOICES = ("proportional", "uniform", "temperature")


def seeded_subset(n_rows: int, k: int, seed: int) -> list[int]:
    """The rows ``--max_train_samples k`` trains on: k of ``n_rows`` row indices drawn without replacement by
    numpy's generator seeded with ``[seed, 0x5EED]``, in file order (all rows when k >= n_rows)."""
    if k >= n_rows:
        return list(range(n_rows))
    rng = np.random.default_rng([seed, 0x5EED])
    return sorted(rng.choice(n_rows, k, replace=False).tolist())


def collate(features: Features, rows: list[int], pad_id: int, regression: bool) -> dict:
    """Pad ``rows`` of ``features`` to their own longest length. Returns the batch dict (see module doc).

    Built from the flat arrays in a few vectorized steps (:meth:`Features.padded`), never row by row.
    """
    input_ids, attention_mask, types = features.padded(rows, pad_id)
    batch = {"task": features.task, "input_ids": input_ids, "attention_mask": attention_mask}
    if types is not None:
        batch["token_type_ids"] = types
    if features.labels is not None:
        labels = [features.labels[i] for i in rows]
        batch["labels"] = torch.tensor(labels, dtype=torch.float if regression else torch.long)
    return batch


def eval_batches(features: Features, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Row ids for evaluation: sorted by length (little padding), this rank's share (rows rank::world_size).

    Rows of equal length keep their order (a stable sort), so the batches depend only on the features.
    """
    rows = np.arange(rank, len(features), world_size, dtype=np.int64)
    rows = rows[np.argsort(features.row_lengths[rows], kind="stable")]
    return [rows[i: i + batch_size].tolist() for i in range(0, len(rows), batch_size)]


def task_probabilities(sizes: dict[str, int], sampling: str, temperature: float) -> dict[str, float]:
    """Probability of drawing each task's batch: proportional to n, uniform, or to n^(1/T)."""
    if sampling == "proportional":
        weights = {t: float(n) for t, n in sizes.items()}
    elif sampling == "uniform":
        weights = {t: 1.0 for t in sizes}
    elif sampling == "temperature":
        weights = {t: float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    else:
        raise ValueError(f"unknown task sampling {sampling!r}; choose one of {', '.join(SAMPLING_CHOICES)}")
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


@dataclass
class SamplerState:
    """Where the sampler is: everything needed to resume exactly (the plan is a function of seed and epoch)."""

    epoch: int = 0
    position: int = 0  # steps already taken in this epoch


class MultiTaskSampler:
    """Yields ``(task, rows)`` for one rank; each mini-batch comes from one task.

    An epoch is ``sum_t ceil(n_t / (batch_size * world_size))`` steps. With ``proportional`` sampling (MT-DNN)
    every task's batches appear exactly once per epoch, shuffled together. With ``uniform`` or ``temperature``
    the task of each step is drawn from those probabilities, and each task cycles through reshuffled passes
    of its data. The plan of an epoch depends only on (seed, epoch), so every rank builds the same plan and
    takes its own slice of each global batch: at each step all ranks see different rows of the same task.
    """

    def __init__(self, sizes: dict[str, int], batch_size: int, seed: int, sampling: str = "proportional",
                 temperature: float = 1.0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.sizes = dict(sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.sampling = sampling
        self.temperature = temperature
        self.rank = rank
        self.world_size = world_size
        self.probs = task_probabilities(self.sizes, sampling, temperature)
        self.state = SamplerState()

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def steps_per_epoch(self) -> int:
        return sum(math.ceil(n / self.global_batch) for n in self.sizes.values())

    def _task_batches(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        perm = rng.permutation(n)
        return [perm[i: i + self.global_batch] for i in range(0, n, self.global_batch)]

    def epoch_plan(self, epoch: int) -> list[tuple[str, np.ndarray]]:
        """The whole epoch's global batches: ``[(task, row ids of all ranks)]``."""
        rng = np.random.default_rng([self.seed, epoch])
        names = sorted(self.sizes)
        if self.sampling == "proportional":
            plan = [(t, b) for t in names for b in self._task_batches(rng, self.sizes[t])]
            order = rng.permutation(len(plan))
            return [plan[i] for i in order]
        steps = self.steps_per_epoch()
        p = np.array([self.probs[t] for t in names])
        draws = rng.choice(len(names), size=steps, p=p)
        queues: dict[str, list[np.ndarray]] = {t: [] for t in names}
        plan = []
        for k in draws:
            t = names[k]
            if not queues[t]:
                queues[t] = self._task_batches(rng, self.sizes[t])
            plan.append((t, queues[t].pop(0)))
        return plan

    def rank_slice(self, rows: np.ndarray) -> list[int]:
        """This rank's part of a global batch (contiguous, as even as the batch allows)."""
        parts = np.array_split(rows, self.world_size)
        return parts[self.rank].tolist()

    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        """Iterate from the current state to the end of the current epoch, advancing the state."""
        plan = self.epoch_plan(self.state.epoch)
        while self.state.position < len(plan):
            task, rows = plan[self.state.position]
            self.state.position += 1
            mine = self.rank_slice(rows)
            if not mine:  # a final global batch smaller than world_size: this rank repeats a row
                mine = [int(rows[self.rank % len(rows)])]
            yield task, mine
        self.state = SamplerState(epoch=self.state.epoch + 1, position=0)

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "position": self.state.position}

    def load_state_dict(self, state: dict) -> None:
        self.state = SamplerState(epoch=int(state["epoch"]), position=int(state["position"]))
