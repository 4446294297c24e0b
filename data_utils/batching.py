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


EVAL_CHUNK_ROWS = 10_000  # rows sorted together for evaluation batches: the sort never holds more than this


def eval_batches(features: Features, batch_size: int, rank: int = 0, world_size: int = 1,
                 max_tokens: int | None = None, chunk_rows: int | None = None) -> Iterator[list[int]]:
    """Row ids of evaluation batches, one batch at a time: this rank's rows (rank::world_size) taken in chunks of
    ``chunk_rows`` (default ``EVAL_CHUNK_ROWS``), each chunk sorted by length (little padding) and cut into
    batches of at most ``batch_size`` rows and, with ``max_tokens``, at most that many padded tokens (rows times
    the longest row; a longer row is a batch of its own).

    Rows of equal length keep their order (a stable sort), so the batches depend only on the features; the
    memory of the sort is one chunk's, whatever the number of rows.
    """
    step = world_size * (chunk_rows or EVAL_CHUNK_ROWS)
    for start in range(rank, len(features), step):
        rows = np.arange(start, min(start + step, len(features)), world_size, dtype=np.int64)
        lens = features.offsets[rows + 1] - features.offsets[rows]
        order = np.argsort(lens, kind="stable")
        rows, lens = rows[order], lens[order]
        i = 0
        while i < len(rows):
            n = min(batch_size, len(rows) - i)
            if max_tokens is not None:  # lengths ascend, so k rows from i pad to lens[i + k - 1]
                fits = np.arange(1, n + 1) * lens[i: i + n] <= max_tokens
                n = max(1, int(fits.sum()))
            yield rows[i: i + n].tolist()
            i += n


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


GROUP_BATCHES = 50  # --group_by_length sorts runs of this many batches (transformers' length-grouped sampler: 50)


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
                 temperature: float = 1.0, rank: int = 0, world_size: int = 1,
                 lengths: dict[str, np.ndarray] | None = None):
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
        # group by length: each task's row lengths (n_t,); None keeps plain shuffled batches
        self.lengths = None if lengths is None else {t: np.asarray(v) for t, v in lengths.items()}
        if self.lengths is not None and any(len(self.lengths[t]) != n for t, n in self.sizes.items()):
            raise ValueError("lengths must give one length per row of every task")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def steps_per_epoch(self) -> int:
        """Global batches in an epoch: the length of every epoch's plan, whatever the sampling."""
        return sum(math.ceil(n / self.global_batch) for n in self.sizes.values())

    def batches_left(self) -> int:
        """Global batches the current epoch has left from the state's position."""
        return self.steps_per_epoch() - self.state.position

    def _task_batches(self, rng: np.random.Generator, n: int, task: str) -> list[np.ndarray]:
        """One pass over a task's rows as global batches: a random permutation cut into batches; with lengths,
        each run of ``GROUP_BATCHES`` batches of the permutation is first sorted by length (longest first), so a
        batch holds rows of similar length while which rows meet stays random."""
        perm = rng.permutation(n)
        if self.lengths is not None:
            group = GROUP_BATCHES * self.global_batch
            lens = self.lengths[task]
            perm = np.concatenate([g[np.argsort(-lens[g], kind="stable")]
                                   for g in (perm[i: i + group] for i in range(0, n, group))]) if n else perm
        return [perm[i: i + self.global_batch] for i in range(0, n, self.global_batch)]

    def epoch_plan(self, epoch: int) -> list[tuple[str, np.ndarray]]:
        """The whole epoch's global batches: ``[(task, row ids of all ranks)]``."""
        rng = np.random.default_rng([self.seed, epoch])
        names = sorted(self.sizes)
        if self.sampling == "proportional":
            plan = [(t, b) for t in names for b in self._task_batches(rng, self.sizes[t], t)]
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
                queues[t] = self._task_batches(rng, self.sizes[t], t)
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
