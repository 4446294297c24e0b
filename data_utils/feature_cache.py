"""The feature cache file: written atomically, checked in full when loaded.

One file per split holds the flat arrays of :class:`~data_utils.flat_rows.Features` as tensors (``torch.save``,
loaded with ``weights_only=True``): ``lengths`` (N,) int64, ``input_ids`` (T,) int32, ``token_type_ids`` (T,) int8
or None, ``labels`` (N,) int64 / float64 or None, ``indices`` (the N row ids joined by newlines: one string, which
``weights_only`` unpickles at once, where a list of 400k strings takes seconds), ``skipped`` (the
``[line, reason]`` of dropped rows), with ``format`` and the full ``key``. Loading checks keys, dtypes, row lengths against the flat
arrays, the row count against the source file, label and id ranges; a file that fails raises :class:`Unusable`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_utils import atomic
from data_utils.flat_rows import Features
from data_utils.task_def import SplitDef, TaskDef

CACHE_FORMAT = 3  # 3: row ids as one newline-joined string; flat arrays read back as they are
PAYLOAD_KEYS = ("format", "key", "lengths", "input_ids", "token_type_ids", "labels", "indices", "skipped")


class Unusable(Exception):
    """A cache file that loads but does not hold what its name promises."""


def save(features: Features, path: Path, key: str, skipped: list[tuple[int, str]]) -> None:
    """Write one cache file atomically (a temporary file, then a rename); raises OSError when it cannot."""
    labels = features.labels
    indices = "\n".join(str(i) for i in features.indices)
    if indices.count("\n") != max(len(features) - 1, 0):
        raise ValueError("a row id holds a newline")  # GLUE ids are TSV fields: never
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "lengths": torch.from_numpy(np.ascontiguousarray(features.row_lengths, dtype=np.int64)),
        "input_ids": torch.from_numpy(np.ascontiguousarray(features.ids, dtype=np.int32)),
        "token_type_ids": (torch.from_numpy(np.ascontiguousarray(features.types, dtype=np.int8))
                           if features.types is not None else None),
        # float64 keeps regression scores exactly as read (2.857 stays 2.857)
        "labels": (torch.tensor(labels, dtype=torch.float64 if any(isinstance(x, float) for x in labels)
                                else torch.long) if labels is not None else None),
        "indices": indices,
        "skipped": [[line, reason] for line, reason in skipped],
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise Unusable(what)


def check_payload(payload, key: str, task: TaskDef, split: SplitDef, source_lines: int, vocab_size: int,
                  want_types: bool) -> None:
    """Raise :class:`Unusable` naming the first inconsistency of a loaded cache payload."""
    _need(isinstance(payload, dict), f"not a feature cache ({type(payload).__name__})")
    missing = [k for k in PAYLOAD_KEYS if k not in payload]
    _need(not missing, f"missing key(s) {', '.join(missing)}")
    _need(payload["format"] == CACHE_FORMAT, f"format {payload['format']!r}, expected {CACHE_FORMAT}")
    _need(payload["key"] == key, "its stored key is not this file's key")
    lengths, ids, types = payload["lengths"], payload["input_ids"], payload["token_type_ids"]
    _need(torch.is_tensor(lengths) and lengths.dim() == 1 and lengths.dtype == torch.long, "lengths: wrong type")
    n = len(lengths)
    _need(n > 0 and int(lengths.min()) >= 0, "negative row lengths")
    total = int(lengths.sum())
    _need(torch.is_tensor(ids) and ids.dim() == 1 and ids.dtype == torch.int32, "input_ids: wrong type or dtype")
    _need(ids.numel() == total, f"row lengths add up to {total}, input_ids has {ids.numel()}")
    _need(total == 0 or (int(ids.min()) >= 0 and int(ids.max()) < vocab_size),
          f"token ids outside the vocabulary (0..{vocab_size - 1})")
    if want_types:
        _need(torch.is_tensor(types) and types.dim() == 1 and types.dtype == torch.int8, "token_type_ids: wrong type")
        _need(types.numel() == total, f"row lengths add up to {total}, token_type_ids has {types.numel()}")
        _need(total == 0 or int(types.min()) >= 0, "negative token type ids")
    else:
        _need(types is None, "token_type_ids for a tokenizer without them")
    indices, skipped = payload["indices"], payload["skipped"]
    _need(isinstance(indices, str) and indices.count("\n") == n - 1, f"indices: not {n} row ids")
    _need(isinstance(skipped, list), "skipped: not a list")
    _need(n + len(skipped) == source_lines,
          f"{n} rows (+{len(skipped)} skipped), the source file has {source_lines} data lines")
    labels = payload["labels"]
    if split.kind == "test":
        _need(labels is None, "labels on a test split")
        return
    _need(torch.is_tensor(labels) and labels.dim() == 1 and len(labels) == n, f"labels: not {n} values")
    if task.type == "regression":
        _need(labels.dtype == torch.float64, f"labels: dtype {labels.dtype}, expected float64")
        _need(bool(torch.isfinite(labels).all()), "non-finite scores")
    else:
        _need(labels.dtype == torch.long, f"labels: dtype {labels.dtype}, expected int64")
        _need(int(labels.min()) >= 0 and int(labels.max()) < task.num_outputs, "class ids outside the labels")


def load(path: Path, key: str, task: TaskDef, split: SplitDef, source_lines: int, vocab_size: int,
         want_types: bool) -> tuple[Features, list[tuple[int, str]]]:
    """Features and skipped lines from a cache file; :class:`Unusable` (one line: why) when it cannot be used."""
    try:
        payload = torch.load(path, weights_only=True)
        check_payload(payload, key, task, split, source_lines, vocab_size, want_types)
    except Exception as exc:  # whatever is wrong with the file, it is rebuilt, never trusted
        raise Unusable((str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]) from None
    lengths = payload["lengths"].numpy()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    types = payload["token_type_ids"]
    labels = payload["labels"].tolist() if payload["labels"] is not None else None
    skipped = [(int(line), str(reason)) for line, reason in payload["skipped"]]
    features = Features.from_flat(task.name, split.name, payload["input_ids"].numpy(), offsets,
                                  types.numpy() if types is not None else None, labels,
                                  payload["indices"].split("\n"))
    return features, skipped
