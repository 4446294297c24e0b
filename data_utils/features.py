"""Tokenization with the encoder's own fast tokenizer, and an on-disk feature cache.

The cache key is everything that decides the features: the file's content (sha256); the tokenizer (its full
serialized definition: vocabulary, normalizer such as lower-casing, pre-tokenizer, special-token template,
added tokens; plus the Python-side settings the backend does not hold: truncation and padding side, the
special tokens and their ids, the model inputs); the truncation strategy and maximum length; the task's
column/label layout and score range; and how malformed rows are treated (``bad_rows``). A changed file,
tokenizer or setting never reuses stale features. Each cache file also stores its full key and is checked on
loading (keys, dtypes, row lengths against the flat array, row count against the source file, label and id
ranges): a file that fails is reported in one warning line and rebuilt. The cache lives under ``cache_dir``
(never inside GLUE_DIR, which may be read-only) and is written atomically (temporary file, then rename).
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

from data_utils.glue import (DataError, SplitRows, check_bad_rows, data_line_count, parse_split, read_bytes,
                             skipped_summary, split_path)
from data_utils.task_def import SplitDef, TaskDef

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2
TRUNCATION = "longest_first"  # pairs lose tokens from the longer sentence first
_PAYLOAD_KEYS = ("format", "key", "lengths", "input_ids", "token_type_ids", "labels", "indices", "skipped")


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


def _special_tokens(tokenizer) -> dict[str, list]:
    """Each special-token attribute with its token(s) and id(s): ``{"cls_token": [["[CLS]", 2]], ...}``."""
    out: dict[str, list] = {}
    for name, value in sorted(getattr(tokenizer, "special_tokens_map", {}).items()):
        tokens = value if isinstance(value, (list, tuple)) else [value]
        out[name] = [[str(t), tokenizer.convert_tokens_to_ids(str(t))] for t in tokens]
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the token ids.

    The fast tokenizer's JSON definition holds the vocabulary, normalizer (lower-casing, accents), pre-tokenizer,
    post-processor (the [CLS]/[SEP] template and token types) and added tokens. The settings a call takes from
    the Python object are added: truncation side (a left-truncating tokenizer keeps other tokens), padding side,
    whether special tokens in the text are split, the special tokens with their ids, the model inputs (token
    type ids or not) and the vocabulary size.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer")
    definition = json.loads(backend.to_str())
    # truncation/padding hold the settings of the last call, not the tokenizer: they are keyed separately
    definition.pop("truncation", None)
    definition.pop("padding", None)
    settings = {
        "class": type(tokenizer).__name__,
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "split_special_tokens": bool(getattr(tokenizer, "split_special_tokens", False)),
        "special_tokens": _special_tokens(tokenizer),
        "model_input_names": list(tokenizer.model_input_names),
        "size": len(tokenizer),
    }
    h = hashlib.sha256(json.dumps(definition, sort_keys=True).encode("utf-8"))
    h.update(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


def _cache_key(raw: bytes, tokenizer_fp: str, task: TaskDef, split: SplitDef, max_len: int,
               bad_rows: str = "error") -> str:
    """The full sha256 hex key of one split's features (the file name uses its first 24 characters)."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(raw).digest())
    layout = [CACHE_FORMAT, tokenizer_fp, TRUNCATION, max_len, task.type, task.input, task.text_a, task.text_b,
              task.label, task.index, list(task.labels or ()), list(task.score_range or ()), split.header,
              list(split.columns or ()), split.kind, bad_rows]
    h.update(json.dumps(layout).encode())
    return h.hexdigest()


def tokenize_examples(tokenizer, task: TaskDef, split: SplitDef, examples, max_len: int) -> Features:
    """Tokenize rows as single sentences or pairs, truncated to ``max_len`` tokens (longest first)."""
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if task.text_b else None
    want_types = "token_type_ids" in tokenizer.model_input_names
    enc = tokenizer(texts_a, texts_b, truncation=TRUNCATION, max_length=max_len, padding=False,
                    return_token_type_ids=want_types, return_attention_mask=False)
    ids = [torch.tensor(x, dtype=torch.long) for x in enc["input_ids"]]
    types = [torch.tensor(x, dtype=torch.long) for x in enc["token_type_ids"]] if want_types else None
    labels = None if split.kind == "test" else [e.label for e in examples]
    return Features(task.name, split.name, ids, types, labels, [e.index for e in examples])


def _save(features: Features, path: Path, key: str, skipped: list[tuple[int, str]]) -> None:
    """Write one cache file atomically; a cache that cannot be written is a warning, never an error."""
    lengths = torch.tensor(features.lengths(), dtype=torch.long)
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "lengths": lengths,
        "input_ids": torch.cat(features.input_ids).to(torch.int32),
        "token_type_ids": (torch.cat(features.token_type_ids).to(torch.int8)
                           if features.token_type_ids is not None else None),
        # float64 keeps regression scores exactly as read (2.857 stays 2.857)
        "labels": (torch.tensor(features.labels, dtype=torch.float64 if any(isinstance(x, float) for x in
                                features.labels) else torch.long) if features.labels is not None else None),
        "indices": features.indices,
        "skipped": [[line, reason] for line, reason in skipped],
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot write cache file %s (%s); continuing without it", path, exc.strerror or exc)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


class _Unusable(Exception):
    """A cache file that loads but does not hold what its name promises."""


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Unusable(what)


def _check_payload(payload, key: str, task: TaskDef, split: SplitDef, source_lines: int, vocab_size: int,
                   want_types: bool) -> None:
    """Raise :class:`_Unusable` naming the first inconsistency of a loaded cache payload."""
    _need(isinstance(payload, dict), f"not a feature cache ({type(payload).__name__})")
    missing = [k for k in _PAYLOAD_KEYS if k not in payload]
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
    _need(isinstance(indices, list) and len(indices) == n and all(isinstance(i, str) for i in indices),
          f"indices: not {n} strings")
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


def _load(path: Path, key: str, task: TaskDef, split: SplitDef, source_lines: int, vocab_size: int,
          want_types: bool) -> tuple[Features, list[tuple[int, str]]] | None:
    """Features and skipped lines from a cache file; None (after one warning line) when it is unusable."""
    try:
        payload = torch.load(path, weights_only=True)
        _check_payload(payload, key, task, split, source_lines, vocab_size, want_types)
    except Exception as exc:  # a damaged cache file is rebuilt, never trusted
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        logger.warning("cache file %s is unusable (%s); rebuilding it", path, reason)
        return None
    sizes = payload["lengths"].tolist()
    ids = [t.long() for t in torch.split(payload["input_ids"], sizes)]
    types = payload["token_type_ids"]
    types = [t.long() for t in torch.split(types, sizes)] if types is not None else None
    labels = payload["labels"].tolist() if payload["labels"] is not None else None
    skipped = [(int(line), str(reason)) for line, reason in payload["skipped"]]
    return Features(task.name, split.name, ids, types, labels, list(payload["indices"])), skipped


def load_features(glue_dir: str | Path, task: TaskDef, split: SplitDef, tokenizer, max_len: int,
                  cache_dir: str | Path | None = None, fingerprint: str | None = None,
                  pending: list | None = None, bad_rows: str = "error") -> Features:
    """Features of one split, from the cache when the file, tokenizer, length and ``bad_rows`` match.

    ``bad_rows``: ``error`` (a malformed row is a :class:`DataError`) or ``skip`` (dropped, one warning).
    With ``pending`` (a list), a cache miss is not written at once but appended as (features, path, key, skipped):
    the caller writes them with :func:`save_pending` once every split has been read, so bad input in a later file
    leaves nothing behind.
    """
    check_bad_rows(bad_rows)
    path = split_path(glue_dir, task, split)
    raw = read_bytes(path, task, split)  # read once: the bytes hashed are the bytes parsed
    if cache_dir is None:
        rows = parse_split(path, raw, task, split, bad_rows)
        return tokenize_examples(tokenizer, task, split, rows.examples, max_len)
    key = _cache_key(raw, fingerprint or tokenizer_fingerprint(tokenizer), task, split, max_len, bad_rows)
    cache_file = Path(cache_dir) / f"{task.name}-{split.name}-{key[:24]}.pt"
    if cache_file.exists():
        loaded = _load(cache_file, key, task, split, data_line_count(raw, split), len(tokenizer),
                       "token_type_ids" in tokenizer.model_input_names)
        if loaded is not None:
            features, skipped = loaded
            if skipped:  # the rows are still dropped: say so on every run, not only the first
                logger.warning(skipped_summary(path, skipped))
            logger.info("%s %s: %d rows from cache %s", task.name, split.name, len(features), cache_file)
            return features
    rows: SplitRows = parse_split(path, raw, task, split, bad_rows)
    features = tokenize_examples(tokenizer, task, split, rows.examples, max_len)
    if pending is not None:
        pending.append((features, cache_file, key, rows.skipped))
        return features
    _save(features, cache_file, key, rows.skipped)
    logger.info("%s %s: tokenized %d rows, cached in %s", task.name, split.name, len(features), cache_file)
    return features


def save_pending(pending: list) -> None:
    """Write the cache files that :func:`load_features` deferred."""
    for features, cache_file, key, skipped in pending:
        _save(features, cache_file, key, skipped)
        logger.info("%s %s: tokenized %d rows, cached in %s", features.task, features.split, len(features),
                    cache_file)
    pending.clear()
