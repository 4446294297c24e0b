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

Memory does not grow with more than the features themselves: files are read one line at a time, tokenized in
chunks of ``CHUNK_ROWS`` rows with the fast tokenizer's batch call, and kept as flat arrays
(:class:`~data_utils.flat_rows.Features`); the cache file stores those arrays and is read back as they are.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from data_utils import feature_cache
from data_utils.feature_cache import CACHE_FORMAT
from data_utils.flat_rows import Features, RowView  # noqa: F401 (Features is this module's public type)
from data_utils.glue import DataError, Example, check_bad_rows, file_digest, iter_split, skipped_summary, split_path
from data_utils.task_def import SplitDef, TaskDef

logger = logging.getLogger(__name__)

TRUNCATION = "longest_first"  # pairs lose tokens from the longer sentence first
CHUNK_ROWS = 10_000  # rows per tokenizer call: bounds the tokenizer's own per-row objects to one chunk


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


def _cache_key(digest: bytes, tokenizer_fp: str, task: TaskDef, split: SplitDef, max_len: int,
               bad_rows: str = "error") -> str:
    """The full sha256 hex key of one split's features (the file name uses its first 24 characters).

    ``digest``: the sha256 digest of the source file's bytes (:func:`data_utils.glue.file_digest`).
    """
    h = hashlib.sha256()
    h.update(digest)
    layout = [CACHE_FORMAT, tokenizer_fp, TRUNCATION, max_len, task.type, task.input, task.text_a, task.text_b,
              task.label, task.index, list(task.labels or ()), list(task.score_range or ()), split.header,
              list(split.columns or ()), split.kind, bad_rows]
    h.update(json.dumps(layout).encode())
    return h.hexdigest()


def tokenize_examples(tokenizer, task: TaskDef, split: SplitDef, examples: Iterable[Example], max_len: int,
                      chunk_rows: int | None = None) -> Features:
    """Tokenize rows as single sentences or pairs, truncated to ``max_len`` tokens (longest first).

    ``examples`` may be any iterable (a file being read): it is consumed ``chunk_rows`` (default ``CHUNK_ROWS``)
    rows at a time, each chunk tokenized by one batch call and appended to flat int32/int8 arrays, so the
    tokenizer's per-row objects never outlive their chunk. The ids are those of one call over all rows
    (truncation is per row).
    """
    want_types = "token_type_ids" in tokenizer.model_input_names
    labels: list | None = None if split.kind == "test" else []
    indices: list = []
    id_parts: list[np.ndarray] = []
    type_parts: list[np.ndarray] = []
    len_parts: list[np.ndarray] = []
    rows = iter(examples)
    chunk_rows = chunk_rows or CHUNK_ROWS
    while chunk := list(itertools.islice(rows, chunk_rows)):
        enc = tokenizer([e.text_a for e in chunk], [e.text_b for e in chunk] if task.text_b else None,
                        truncation=TRUNCATION, max_length=max_len, padding=False,
                        return_token_type_ids=want_types, return_attention_mask=False)
        ids = enc["input_ids"]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lens.sum())
        len_parts.append(lens)
        id_parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=total))
        if want_types:
            type_parts.append(np.fromiter(itertools.chain.from_iterable(enc["token_type_ids"]), dtype=np.int8,
                                          count=total))
        if labels is not None:
            labels.extend(e.label for e in chunk)
        indices.extend(e.index for e in chunk)
        del enc, ids, chunk
    offsets = np.zeros(sum(len(x) for x in len_parts) + 1, dtype=np.int64)
    if len_parts:
        np.cumsum(np.concatenate(len_parts), out=offsets[1:])
    flat_ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int32)
    del id_parts
    flat_types = None
    if want_types:
        flat_types = np.concatenate(type_parts) if type_parts else np.zeros(0, dtype=np.int8)
    return Features.from_flat(task.name, split.name, flat_ids, offsets, flat_types, labels, indices)


def _load(path: Path, key: str, task: TaskDef, split: SplitDef, source_lines: int, tokenizer):
    """Features and skipped lines from a cache file; None (after one warning line) when it is unusable."""
    try:
        return feature_cache.load(path, key, task, split, source_lines, len(tokenizer),
                                  "token_type_ids" in tokenizer.model_input_names)
    except feature_cache.Unusable as exc:
        logger.warning("cache file %s is unusable (%s); rebuilding it", path, exc)
        return None


def _save(features: Features, path: Path, key: str, skipped: list[tuple[int, str]]) -> str:
    """Write one cache file; a cache that cannot be written is a warning, never an error. Returns what became
    of it, for the log line: ``cached in PATH`` or ``not cached``."""
    try:
        feature_cache.save(features, path, key, skipped)
    except (OSError, ValueError) as exc:
        logger.warning("cannot write cache file %s (%s); continuing without it", path,
                       getattr(exc, "strerror", None) or exc)
        return "not cached"
    return f"cached in {path}"


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
    start = time.perf_counter()
    if cache_dir is None:
        return tokenize_examples(tokenizer, task, split, iter_split(path, task, split, bad_rows), max_len)
    digest, source_lines = file_digest(path, task, split)
    key = _cache_key(digest, fingerprint or tokenizer_fingerprint(tokenizer), task, split, max_len, bad_rows)
    cache_file = Path(cache_dir) / f"{task.name}-{split.name}-{key[:24]}.pt"
    if cache_file.exists():
        loaded = _load(cache_file, key, task, split, source_lines, tokenizer)
        if loaded is not None:
            features, dropped = loaded
            if dropped:  # the rows are still dropped: say so on every run, not only the first
                logger.warning(skipped_summary(path, dropped))
            logger.info("%s %s: %d rows from cache %s (%.1f s)", task.name, split.name, len(features), cache_file,
                        time.perf_counter() - start)
            return features
    skipped: list[tuple[int, str]] = []
    hasher = hashlib.sha256()  # the bytes tokenized must be the bytes the key was made of
    features = tokenize_examples(tokenizer, task, split, iter_split(path, task, split, bad_rows, skipped, hasher),
                                 max_len)
    if hasher.digest() != digest:
        raise DataError(f"{path}: the file changed while it was being read; run again")
    if pending is not None:
        pending.append((features, cache_file, key, skipped))
        return features
    saved = _save(features, cache_file, key, skipped)
    logger.info("%s %s: tokenized %d rows in %.1f s, %s", task.name, split.name, len(features),
                time.perf_counter() - start, saved)
    return features


def data_fingerprint(glue_dir: str | Path, tasks: Iterable[TaskDef], with_dev: bool) -> dict[str, str]:
    """What a training reads, as ``{"rte/train": sha256 prefix, ...}``: each task's train split and, when it
    evaluates, its dev splits (the digests the feature cache is keyed by). A run records it, and ``--resume``
    refuses data that changed since."""
    out: dict[str, str] = {}
    for task in tasks:
        for split in task.splits_of("train")[:1] + (task.splits_of("dev") if with_dev else []):
            digest, _ = file_digest(split_path(glue_dir, task, split), task, split)
            out[f"{task.name}/{split.name}"] = digest.hex()[:16]
    return out


def save_pending(pending: list) -> None:
    """Write the cache files that :func:`load_features` deferred."""
    for features, cache_file, key, skipped in pending:
        saved = _save(features, cache_file, key, skipped)
        logger.info("%s %s: tokenized %d rows, %s", features.task, features.split, len(features), saved)
    pending.clear()
