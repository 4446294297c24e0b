"""data_utils.features against expectations written by hand: the tokenizer fingerprint's recipe, the special-token
table, the data fingerprint (sha256 of the files' bytes), the cache file's name, the log lines of a tokenization
and of a cache hit, deferred cache writes, and the empty split's flat arrays."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

import data_utils.feature_cache as feature_cache
from data_utils.features import (
    _cache_key, _special_tokens, data_fingerprint, load_features, save_pending, tokenize_examples,
    tokenizer_fingerprint)
from data_utils.glue import DataError, Example
from data_utils.task_def import SplitDef
from tests.glue_fixtures import PUNCTUATION, SPECIAL_TOKENS, VOCAB_WORDS, write_glue


@pytest.fixture()
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def _messages(caplog, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "data_utils.features" and r.levelno == level]


# ---- the tokenizer fingerprint --------------------------------------------------------------------------------

class _StandIn:
    """The parts of a fast tokenizer the fingerprint reads, with a vocabulary of 4 and a list-valued entry."""

    IDS = {"[CLS]": 2, "[A]": 7, "[B]": 8}

    def __init__(self, backend, **settings):
        self.backend_tokenizer = backend
        self.model_input_names = ["input_ids", "attention_mask"]
        self.special_tokens_map = {"cls_token": "[CLS]", "additional_special_tokens": ["[A]", "[B]"]}
        for k, v in settings.items():
            setattr(self, k, v)

    def convert_tokens_to_ids(self, token):
        return self.IDS.get(token, 0)

    def __len__(self):
        return 4


def test_special_tokens_table_by_hand(tok):
    # the format in _special_tokens' docstring: name -> [[token, id], ...], one pair per token of a list
    assert _special_tokens(_StandIn(None)) == {"additional_special_tokens": [["[A]", 7], ["[B]", 8]],
                                               "cls_token": [["[CLS]", 2]]}
    assert _special_tokens(object()) == {}  # no special_tokens_map at all
    # the fixture tokenizer: each special token's id is its line in vocab.txt (SPECIAL_TOKENS come first)
    names = {"[PAD]": "pad_token", "[UNK]": "unk_token", "[CLS]": "cls_token", "[SEP]": "sep_token",
             "[MASK]": "mask_token"}
    assert _special_tokens(tok) == {names[t]: [[t, SPECIAL_TOKENS.index(t)]] for t in SPECIAL_TOKENS}


def test_fingerprint_recipe_written_out(tok):
    # expected: the recipe of tokenizer_fingerprint's docstring written out here: sha256 of the backend's JSON
    # (sorted keys) without the per-call truncation/padding state, then of the Python-side settings (sorted
    # keys), the settings typed in by hand for the fixture tokenizer
    definition = json.loads(tok.backend_tokenizer.to_str())
    del definition["truncation"], definition["padding"]
    settings = {
        "class": type(tok).__name__,
        "truncation_side": "right",
        "padding_side": "right",
        "split_special_tokens": False,
        "special_tokens": {"cls_token": [["[CLS]", 2]], "mask_token": [["[MASK]", 4]], "pad_token": [["[PAD]", 0]],
                           "sep_token": [["[SEP]", 3]], "unk_token": [["[UNK]", 1]]},
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "size": len(SPECIAL_TOKENS) + len(VOCAB_WORDS) + len(PUNCTUATION),
    }
    h = hashlib.sha256(json.dumps(definition, sort_keys=True).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    assert tokenizer_fingerprint(tok) == h.hexdigest()


def test_fingerprint_ignores_the_last_calls_padding_and_truncation(tok):
    before = tokenizer_fingerprint(tok)
    tok(["the cat .", "a dog sees the cat ."], truncation=True, max_length=4, padding="longest")
    assert json.loads(tok.backend_tokenizer.to_str())["padding"] is not None  # the call left its state behind
    assert tokenizer_fingerprint(tok) == before


def test_fingerprint_python_side_settings(tok):
    # a tokenizer object without these attributes is keyed as right truncation, right padding, no splitting
    backend = tok.backend_tokenizer
    bare = _StandIn(backend)
    explicit = _StandIn(backend, truncation_side="right", padding_side="right", split_special_tokens=False)
    assert tokenizer_fingerprint(bare) == tokenizer_fingerprint(explicit)
    for change in ({"truncation_side": "left"}, {"padding_side": "left"}, {"split_special_tokens": True}):
        assert tokenizer_fingerprint(_StandIn(backend, **change)) != tokenizer_fingerprint(bare), change
    # a special token that only the Python side knows of (the backend JSON does not change)
    other = _StandIn(backend)
    other.special_tokens_map = {"cls_token": "[CLS]", "additional_special_tokens": ["[B]", "[A]"]}
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(bare)
    # the tokenizer's class is part of the key: a subclass with the same definition is another tokenizer
    renamed = copy.copy(tok)
    renamed.__class__ = type("RenamedTokenizer", (type(tok),), {})
    assert tokenizer_fingerprint(renamed) != tokenizer_fingerprint(tok)


def test_not_a_fast_tokenizer_message():
    class SlowThing:
        pass

    with pytest.raises(DataError) as err:
        tokenizer_fingerprint(SlowThing())
    assert str(err.value) == "tokenizer SlowThing is not a fast tokenizer"


def test_cache_key_default_treats_bad_rows_as_errors(tasks):
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    assert _cache_key(b"x", "fp", task, split, 64) == _cache_key(b"x", "fp", task, split, 64, "error")
    assert len(_cache_key(b"x", "fp", task, split, 64)) == 64  # a full sha256 hex key


# ---- tokenizing ---------------------------------------------------------------------------------------------

def test_no_rows_give_empty_flat_arrays_of_the_documented_dtypes(tok, tasks):
    task = tasks["rte"]
    feats = tokenize_examples(tok, task, task.splits["dev"], [], 16)
    assert len(feats) == 0 and feats.offsets.tolist() == [0] and feats.labels == [] and feats.indices == []
    assert feats.ids.dtype == np.int32 and feats.ids.shape == (0,)
    assert feats.types.dtype == np.int8 and feats.types.shape == (0,)
    test = tokenize_examples(tok, task, task.splits["test"], iter([]), 16)
    assert test.labels is None


def test_a_tokenizer_without_token_types_gives_none(tok, tasks):
    task = tasks["rte"]
    no_types = copy.copy(tok)
    no_types.model_input_names = ["input_ids", "attention_mask"]
    rows = [Example(text_a="the cat .", text_b="a dog .", label=1, index="0", line=2)]
    feats = tokenize_examples(no_types, task, task.splits["dev"], rows, 16)
    assert feats.types is None and feats.token_type_ids is None
    # [CLS] the cat . [SEP] a dog . [SEP], ids by hand from the vocabulary file's order
    vocab = SPECIAL_TOKENS + VOCAB_WORDS + PUNCTUATION
    assert feats.input_ids[0].tolist() == [vocab.index(t) for t in
                                          ("[CLS]", "the", "cat", ".", "[SEP]", "a", "dog", ".", "[SEP]")]
    empty = tokenize_examples(no_types, task, task.splits["dev"], [], 16)
    assert empty.types is None


def test_bad_rows_skip_without_a_cache(tok, tasks, tmp_path):
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    path = root / "RTE" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines.insert(2, "99\tonly two fields")  # a malformed row after the first data row
    path.write_text("\n".join(lines) + "\n")
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    with pytest.raises(DataError):
        load_features(root, task, split, tok, 16)
    feats = load_features(root, task, split, tok, 16, bad_rows="skip")
    assert len(feats) == len(lines) - 2  # header and the malformed row dropped
    assert "99" not in feats.indices


# ---- the cache file, its log lines, deferred writes ---------------------------------------------------------

def test_cache_file_name_and_log_lines(tok, tasks, tmp_path, caplog):
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    rows = len((root / "RTE" / "dev.tsv").read_text().splitlines()) - 1  # data lines below the header
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="data_utils.features"):
        load_features(root, task, split, tok, 16, cache)
    (cache_file,) = cache.iterdir()
    assert re.fullmatch(r"rte-dev-[0-9a-f]{24}\.pt", cache_file.name)  # the key's first 24 characters
    (line,) = _messages(caplog)
    m = re.fullmatch(rf"rte dev: tokenized {rows} rows in (\d+\.\d) s, cached in {re.escape(str(cache_file))}", line)
    assert m and float(m.group(1)) < 60, line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_utils.features"):
        load_features(root, task, split, tok, 16, cache)
    (line,) = _messages(caplog)
    m = re.fullmatch(rf"rte dev: {rows} rows from cache {re.escape(str(cache_file))} \((\d+\.\d) s\)", line)
    assert m and float(m.group(1)) < 60, line


def test_pending_writes_wait_for_save_pending(tok, tasks, tmp_path, caplog):
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    task, split = tasks["rte"], tasks["rte"].splits["train"]
    cache = tmp_path / "cache"
    pending: list = []
    feats = load_features(root, task, split, tok, 16, cache, pending=pending)
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing written yet
    ((held, path, key, skipped),) = pending
    assert held is feats and skipped == [] and re.fullmatch("[0-9a-f]{64}", key)
    assert path == cache / f"rte-train-{key[:24]}.pt"
    with caplog.at_level(logging.INFO, logger="data_utils.features"):
        save_pending(pending)
    assert pending == [] and list(cache.iterdir()) == [path]
    assert _messages(caplog) == [f"rte train: tokenized {len(feats)} rows, cached in {path}"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_utils.features"):  # the file written later is a cache hit
        again = load_features(root, task, split, tok, 16, cache)
    assert _messages(caplog, logging.WARNING) == [] and "rows from cache" in _messages(caplog)[0]
    assert again.indices == feats.indices


def test_unwritable_cache_warning_and_log_line(tok, tasks, tmp_path, caplog, monkeypatch):
    root = write_glue(tmp_path / "glue", tasks=("sst",))
    task, split = tasks["sst"], tasks["sst"].splits["dev"]
    not_a_dir = tmp_path / "cache_file"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.INFO, logger="data_utils.features"):
        load_features(root, task, split, tok, 16, not_a_dir)
    (warning,) = _messages(caplog, logging.WARNING)
    # the OSError's own text (its strerror), not its repr with the errno and the path
    path = re.fullmatch(r"cannot write cache file (\S+) \((File exists|Not a directory)\); continuing without it",
                        warning)
    assert path and Path(path.group(1)).parent == not_a_dir, warning
    (info,) = _messages(caplog)
    assert re.fullmatch(r"sst dev: tokenized 8 rows in \d+\.\d s, not cached", info), info

    def refuse(*args, **kwargs):
        raise ValueError("indices hold a line break")

    monkeypatch.setattr(feature_cache, "save", refuse)
    caplog.clear()
    pending: list = []
    with caplog.at_level(logging.INFO, logger="data_utils.features"):
        load_features(root, task, split, tok, 16, tmp_path / "cache", pending=pending)
        save_pending(pending)
    (warning,) = _messages(caplog, logging.WARNING)
    assert warning.endswith(" (indices hold a line break); continuing without it")  # a ValueError has no strerror
    assert _messages(caplog) == ["sst dev: tokenized 8 rows, not cached"]


def test_unusable_cache_file_warning(tok, tasks, tmp_path, caplog):
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    load_features(root, task, split, tok, 16, tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="data_utils.features"):
        load_features(root, task, split, tok, 16, tmp_path / "cache")
    (warning,) = _messages(caplog, logging.WARNING)
    assert re.fullmatch(rf"cache file {re.escape(str(cache_file))} is unusable \(.+\); rebuilding it", warning)


# ---- what a training reads --------------------------------------------------------------------------------------

def test_data_fingerprint_is_the_files_sha256(tasks, tmp_path):
    # expected: hashlib's sha256 of each file's bytes, first 16 hex characters; the first train split, and the dev
    # splits (MNLI has two) only with_dev
    root = write_glue(tmp_path / "glue", tasks=("rte", "mnli"))

    def sha(*parts):
        return hashlib.sha256((root.joinpath(*parts)).read_bytes()).hexdigest()[:16]

    rte, mnli = tasks["rte"], tasks["mnli"]
    assert data_fingerprint(root, [rte, mnli], with_dev=False) == {
        "rte/train": sha("RTE", "train.tsv"), "mnli/train": sha("MNLI", "train.tsv")}
    assert data_fingerprint(root, [rte, mnli], with_dev=True) == {
        "rte/train": sha("RTE", "train.tsv"), "rte/dev": sha("RTE", "dev.tsv"),
        "mnli/train": sha("MNLI", "train.tsv"), "mnli/dev_matched": sha("MNLI", "dev_matched.tsv"),
        "mnli/dev_mismatched": sha("MNLI", "dev_mismatched.tsv")}
    # a second train split is not read: only the first one trains
    two = dataclasses.replace(rte, splits={**rte.splits, "train2": SplitDef("train2", "train", "dev.tsv")})
    assert data_fingerprint(root, [two], with_dev=False) == {"rte/train": sha("RTE", "train.tsv")}
    assert data_fingerprint(root, [], with_dev=True) == {}
    (root / "RTE" / "dev.tsv").unlink()
    with pytest.raises(DataError) as err:
        data_fingerprint(root, [rte], with_dev=True)
    assert str(err.value) == f"{root / 'RTE' / 'dev.tsv'}: file not found (task rte, split dev)"
