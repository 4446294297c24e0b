"""Tokenized rows stored flat: every row's token ids one after the other in one int32 array, plus row offsets.

A split of N rows with T tokens in all costs about 5 T + 8 N bytes (ids int32, token types int8, offsets int64)
instead of two tensors per row, and a padded batch is gathered from the flat arrays with a few vectorized
operations (:meth:`Features.padded`).
"""
from __future__ import annotations

import operator
from typing import Iterator, Sequence

import numpy as np
import torch


class RowView(Sequence[torch.Tensor]):
    """Read-only list-like view of a flat array: ``view[i]`` is row i as a new 1-D LongTensor."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = flat
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} of {n}")
        return torch.from_numpy(self.flat[self.offsets[i]:self.offsets[i + 1]].astype(np.int64))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))


def _flatten(rows: Sequence, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(flat array, offsets (N+1,)) of a sequence of 1-D rows (tensors, arrays or lists)."""
    parts = [np.asarray(r.numpy() if torch.is_tensor(r) else r, dtype=np.int64).reshape(-1) for r in rows]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    info = np.iinfo(dtype)
    if flat.size and (flat.min() < info.min or flat.max() > info.max):
        raise ValueError(f"token ids outside {np.dtype(dtype).name}")
    return flat.astype(dtype), offsets


class Features:
    """Tokenized rows of one split.

    Stored flat: ``ids`` (T,) int32 and ``types`` (T,) int8 (None where the tokenizer makes no token types) hold
    every row's tokens one after the other; row i is ``ids[offsets[i]:offsets[i + 1]]`` (``offsets`` (N+1,)
    int64). ``labels`` (N values: class ids or scores; None for test splits) and ``indices`` (N row ids) are lists.
    ``input_ids[i]`` / ``token_type_ids[i]`` give row i as a 1-D LongTensor (no padding).

    ``Features(task, split, input_ids, token_type_ids, labels, indices)`` takes rows (sequences of 1-D tensors
    or lists, or another Features' views); :meth:`from_flat` takes the flat arrays themselves.
    """

    def __init__(self, task: str, split: str, input_ids: Sequence, token_type_ids: Sequence | None,
                 labels: list[int | float] | None, indices: list):
        if isinstance(input_ids, RowView):
            ids, offsets = input_ids.flat, input_ids.offsets
        else:
            ids, offsets = _flatten(input_ids, np.int32)
        types = None
        if isinstance(token_type_ids, RowView):
            types = token_type_ids.flat
        elif token_type_ids is not None:
            types, type_offsets = _flatten(token_type_ids, np.int8)
            if not np.array_equal(type_offsets, offsets):
                raise ValueError("token_type_ids rows differ in length from input_ids rows")
        self._set(task, split, ids, offsets, types, labels, indices)

    @classmethod
    def from_flat(cls, task: str, split: str, ids: np.ndarray, offsets: np.ndarray, types: np.ndarray | None,
                  labels: list[int | float] | None, indices: list) -> "Features":
        """Features over the flat arrays (not copied): ids (T,) int32, offsets (N+1,) int64, types (T,) int8."""
        self = cls.__new__(cls)
        self._set(task, split, ids, offsets, types, labels, indices)
        return self

    def _set(self, task, split, ids, offsets, types, labels, indices) -> None:
        n = len(offsets) - 1
        if offsets[0] != 0 or offsets[-1] != len(ids) or (types is not None and len(types) != len(ids)):
            raise ValueError("offsets do not span the flat arrays")
        if len(indices) != n or (labels is not None and len(labels) != n):
            raise ValueError(f"{n} rows, {len(indices)} indices, {'-' if labels is None else len(labels)} labels")
        self.task, self.split = task, split
        self.ids, self.offsets, self.types = ids, offsets, types
        self.labels, self.indices = labels, indices

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def input_ids(self) -> RowView:
        return RowView(self.ids, self.offsets)

    @property
    def token_type_ids(self) -> RowView | None:
        return RowView(self.types, self.offsets) if self.types is not None else None

    @property
    def row_lengths(self) -> np.ndarray:
        """(N,) int64: each row's number of tokens."""
        return np.diff(self.offsets)

    def lengths(self) -> list[int]:
        return self.row_lengths.tolist()

    def subset(self, rows: Sequence[int]) -> "Features":
        """The given rows, in that order (a copy)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts, lens = self.offsets[rows], self.row_lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        # position k of the new flat array comes from starts[row of k] + (k - offsets[row of k])
        take = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        rows_list = rows.tolist()
        return Features.from_flat(self.task, self.split, self.ids[take], offsets,
                                  self.types[take] if self.types is not None else None,
                                  [self.labels[i] for i in rows_list] if self.labels is not None else None,
                                  [self.indices[i] for i in rows_list])

    def head(self, n: int | None) -> "Features":
        """The first ``n`` rows in file order (all of them when ``n`` is None or not less than the row count)."""
        return self if not n or n >= len(self) else self.subset(range(n))

    def padded(self, rows: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``rows`` padded to their own longest row: input_ids, attention_mask and token_type_ids (or None), each
        (B, T) LongTensor, where T is the longest of the rows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts = self.offsets[rows]
        lens = self.offsets[rows + 1] - starts
        longest = int(lens.max())
        pos = np.arange(longest, dtype=np.int64)
        mask = pos[None, :] < lens[:, None]  # (B, T): row-major, so mask order is each row's tokens in order
        take = (starts[:, None] + pos[None, :])[mask]
        ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
        ids[mask] = self.ids[take]
        types = None
        if self.types is not None:
            types = np.zeros((len(rows), longest), dtype=np.int64)
            types[mask] = self.types[take]
            types = torch.from_numpy(types)
        return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)), types
