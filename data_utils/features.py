"""Tokenization with the encoder's own fast tokenizer, and an on-disk feature cache.

The cache key is the file's content (sha256), the tokenizer (a hash of its full serialized definition),
the maximum length and the task's column/label layout, so a changed file, tokenizer or length never
reuses stale features. The cache lives under ``cache_dir`` (never inside GLUE_DIR, which may be
read-only) and is written atomically (temporary file, then rename).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from data_utils.glue import DataError, read_split, split_path
from data_utils.task_def import SplitDef, TaskDef

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class Features:
    """Tokenized rows of one split. ``input_ids[i]`` is a 1-D LongTensor of row i's token ids (no padding)."""

    task: str
    split: str
    input_ids: list[torch.Tensor]
    token_type_ids: list[torch.Tensor] | None
    labels: list[int | float] | None  # None for test splits
    indices: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    def subset(self, rows: list[int]) -> "Features":
        return Features(self.task, self.split, [self.input_ids[i] for i in rows],
                        [self.token_type_ids[i] for i in rows] if self.token_type_ids is not None else None,
                        [self.labels[i] for i in rows] if self.labels is not None else None,
                        [self.indices[i] for i in rows])


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the token ids: the fast tokenizer's full JSON definition."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer")
    definition = json.loads(backend.to_str())
    # truncation/padding hold the settings of the last call, not the tokenizer: max_len is keyed separately
    definition.pop("truncation", None)
    definition.pop("padding", None)
    h = hashlib.sha256(json.dumps(definition, sort_keys=True).encode("utf-8"))
    h.update(json.dumps(list(tokenizer.model_input_names)).encode())
    return h.hexdigest()


def _cache_key(raw: bytes, tokenizer_fp: str, task: TaskDef, split: SplitDef, max_len: int) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(raw).digest())
    layout = [CACHE_FORMAT, tokenizer_fp, max_len, task.type, task.text_a, task.text_b, task.label,
              task.index, list(task.labels or ()), split.header, list(split.columns or ()), split.kind]
    h.update(json.dumps(layout).encode())
    return h.hexdigest()[:24]


def tokenize_examples(tokenizer, task: TaskDef, split: SplitDef, examples, max_len: int) -> Features:
    """Tokenize rows as single sentences or pairs, truncated to ``max_len`` tokens (longest first)."""
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if task.text_b else None
    want_types = "token_type_ids" in tokenizer.model_input_names
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_len, padding=False,
                    return_token_type_ids=want_types, return_attention_mask=False)
    ids = [torch.tensor(x, dtype=torch.long) for x in enc["input_ids"]]
    types = [torch.tensor(x, dtype=torch.long) for x in enc["token_type_ids"]] if want_types else None
    labels = None if split.kind == "test" else [e.label for e in examples]
    return Features(task.name, split.name, ids, types, labels, [e.index for e in examples])


def _save(features: Features, path: Path) -> None:
    lengths = torch.tensor(features.lengths(), dtype=torch.long)
    payload = {
        "format": CACHE_FORMAT,
        "lengths": lengths,
        "input_ids": torch.cat(features.input_ids).to(torch.int32),
        "token_type_ids": (torch.cat(features.token_type_ids).to(torch.int8)
                           if features.token_type_ids is not None else None),
        # float64 keeps regression scores exactly as read (2.857 stays 2.857)
        "labels": (torch.tensor(features.labels, dtype=torch.float64 if any(isinstance(x, float) for x in
                                features.labels) else torch.long) if features.labels is not None else None),
        "indices": features.indices,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path, task: TaskDef, split: SplitDef) -> Features | None:
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as exc:  # a damaged cache file is rebuilt, never trusted
        logger.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None
    if payload.get("format") != CACHE_FORMAT:
        return None
    sizes = payload["lengths"].tolist()
    ids = [t.long() for t in torch.split(payload["input_ids"], sizes)]
    types = payload["token_type_ids"]
    types = [t.long() for t in torch.split(types, sizes)] if types is not None else None
    labels = payload["labels"].tolist() if payload["labels"] is not None else None
    return Features(task.name, split.name, ids, types, labels, list(payload["indices"]))


def load_features(glue_dir: str | Path, task: TaskDef, split: SplitDef, tokenizer, max_len: int,
                  cache_dir: str | Path | None = None, fingerprint: str | None = None,
                  pending: list | None = None) -> Features:
    """Features of one split, from the cache when the file, tokenizer and length match.

    With ``pending`` (a list), a cache miss is not written at once but appended as (features, path): the caller
    writes them with :func:`save_pending` once every split has been read, so bad input in a later file leaves
    nothing behind.
    """
    path = split_path(glue_dir, task, split)
    if cache_dir is None:
        return tokenize_examples(tokenizer, task, split, read_split(glue_dir, task, split), max_len)
    try:
        raw = path.read_bytes()
    except OSError:
        raw = b""  # read_split below reports the problem in its own words
    key = _cache_key(raw, fingerprint or tokenizer_fingerprint(tokenizer), task, split, max_len)
    cache_file = Path(cache_dir) / f"{task.name}-{split.name}-{key}.pt"
    if cache_file.exists():
        features = _load(cache_file, task, split)
        if features is not None:
            logger.info("%s %s: %d rows from cache %s", task.name, split.name, len(features), cache_file)
            return features
    features = tokenize_examples(tokenizer, task, split, read_split(glue_dir, task, split), max_len)
    if pending is not None:
        pending.append((features, cache_file))
        return features
    _save(features, cache_file)
    logger.info("%s %s: tokenized %d rows, cached in %s", task.name, split.name, len(features), cache_file)
    return features


def save_pending(pending: list) -> None:
    """Write the cache files that :func:`load_features` deferred."""
    for features, cache_file in pending:
        _save(features, cache_file)
        logger.info("%s %s: tokenized %d rows, cached in %s", features.task, features.split, len(features),
                    cache_file)
    pending.clear()
