"""The feature cache never serves features of another tokenization, and a damaged cache file is rebuilt once."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

import data_utils.features as features_mod
from data_utils.features import _cache_key, load_features, tokenizer_fingerprint
from data_utils.glue import DataError
from tests.glue_fixtures import write_glue

MAX_LEN = 12
LONG = "the cat sees a dog " * 6 + "."  # 31 tokens: truncation at MAX_LEN cuts it


def _tok(tok_dir: Path, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir), **kwargs)


@pytest.fixture
def rte(tmp_path):
    """RTE files whose first dev row has a long first sentence."""
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    path = root / "RTE" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[1] = f"0\t{LONG}\tthe cat .\tentailment"
    path.write_text("\n".join(lines) + "\n")
    return root


def _forbid_tokenizing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("tokenized although the cache should have been used")
    monkeypatch.setattr(features_mod, "tokenize_examples", boom)


def _warnings(caplog, name: str | None = "data_utils.features") -> list[str]:
    """Warning messages of logger ``name`` (of every logger for None)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and name in (None, r.name)]


# ---- the key ------------------------------------------------------------------------------------------------

def test_truncation_side_is_part_of_the_key(tok_dir, tasks, rte, tmp_path, monkeypatch):
    right, left = _tok(tok_dir), _tok(tok_dir, truncation_side="left")
    assert tokenizer_fingerprint(right) != tokenizer_fingerprint(left)
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    fresh_right = load_features(rte, task, split, right, MAX_LEN).input_ids[0].tolist()
    fresh_left = load_features(rte, task, split, left, MAX_LEN).input_ids[0].tolist()
    assert fresh_left != fresh_right and len(fresh_left) == MAX_LEN  # the two settings really differ
    cache = tmp_path / "cache"
    for first, second, want in ((right, left, fresh_left), (left, right, fresh_right)):
        for f in cache.glob("*.pt"):
            f.unlink()
        load_features(rte, task, split, first, MAX_LEN, cache)
        got = load_features(rte, task, split, second, MAX_LEN, cache)  # not the other setting's file
        assert got.input_ids[0].tolist() == want
        assert len(list(cache.glob("*.pt"))) == 2
    with monkeypatch.context() as m:  # each setting now reads its own file
        _forbid_tokenizing(m)
        assert load_features(rte, task, split, left, MAX_LEN, cache).input_ids[0].tolist() == fresh_left
        assert load_features(rte, task, split, right, MAX_LEN, cache).input_ids[0].tolist() == fresh_right


@pytest.mark.parametrize("change", ["padding_side", "lowercase", "special_token", "no_token_types",
                                    "split_special_tokens", "added_token"])
def test_every_id_setting_changes_the_fingerprint(tok_dir, change):
    base = tokenizer_fingerprint(_tok(tok_dir))
    if change == "padding_side":
        tok = _tok(tok_dir, padding_side="left")
    elif change == "lowercase":
        tok = _tok(tok_dir, do_lower_case=False)
        assert tok("Cat")["input_ids"] != _tok(tok_dir)("Cat")["input_ids"]
    elif change == "special_token":
        tok = _tok(tok_dir, unk_token="[MASK]")
    elif change == "no_token_types":
        tok = _tok(tok_dir, model_input_names=["input_ids", "attention_mask"])
    elif change == "split_special_tokens":
        tok = _tok(tok_dir, split_special_tokens=True)
    else:
        tok = _tok(tok_dir)
        tok.add_tokens(["zebra"])
    assert tokenizer_fingerprint(tok) != base
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(tok)  # stable


@pytest.mark.parametrize("field,value", [("text_a", "sentence2"), ("label", "gold"), ("labels", ("a", "b")),
                                         ("input", "single"), ("score_range", (0.0, 1.0))])
def test_task_layout_changes_the_key(tasks, field, value):
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    base = _cache_key(b"x", "fp", task, split, 64)
    assert _cache_key(b"x", "fp", dataclasses.replace(task, **{field: value}), split, 64) != base
    assert _cache_key(b"x", "fp", task, split, 65) != base
    assert _cache_key(b"x", "fp", task, split, 64, "skip") != base
    assert _cache_key(b"y", "fp", task, split, 64) != base


def test_any_two_readings_that_differ_have_different_keys(tok_dir, tasks, rte):
    """Every combination of the reading's settings (which column is text a and b, the label order, header or
    named columns, the length, strict or skipping reads) on one file: wherever two combinations read different
    features (or one refuses the file), their cache keys differ, so the cache never serves one for the other."""
    import itertools

    from data_utils.features import tokenize_examples
    from data_utils.glue import file_digest, iter_split

    tok = _tok(tok_dir)
    fp = tokenizer_fingerprint(tok)
    base_task, base_split = tasks["rte"], tasks["rte"].splits["dev"]
    path = rte / "RTE" / "dev.tsv"
    digest, _ = file_digest(path, base_task, base_split)
    columns = ("index", "sentence1", "sentence2", "label")
    seen: dict[str, tuple] = {}
    for a, b, labels, header, max_len, bad_rows in itertools.product(
            ("sentence1", "sentence2"), ("sentence2", "sentence1", None),
            (("entailment", "not_entailment"), ("not_entailment", "entailment")), (True, False), (8, MAX_LEN),
            ("error", "skip")):
        task = dataclasses.replace(base_task, text_a=a, text_b=b, labels=labels,
                                   input="pair" if b else "single")
        split = dataclasses.replace(base_split, header=header, columns=None if header else columns)
        try:
            feats = tokenize_examples(tok, task, split, iter_split(path, task, split, bad_rows), max_len)
            reading = (feats.ids.tolist(), feats.offsets.tolist(), list(feats.labels))
        except DataError as exc:  # without the header line, the header is a row with an unknown label
            reading = ("refused", str(exc).split(": ", 1)[1])
        key = _cache_key(digest, fp, task, split, max_len, bad_rows)
        for other_key, other in seen.items():
            if other != reading:
                assert other_key != key
        seen[key] = reading
    assert len(seen) == 2 * 3 * 2 * 2 * 2 * 2  # and no two combinations share a key at all


def test_bad_rows_skip_features_are_never_served_to_strict_reads(tok_dir, tasks, tmp_path, caplog):
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    path = root / "RTE" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    path.write_text("\n".join(lines) + "\n")
    tok, task, split, cache = _tok(tok_dir), tasks["rte"], tasks["rte"].splits["dev"], tmp_path / "cache"
    skipped = load_features(root, task, split, tok, 64, cache, bad_rows="skip")
    assert len(skipped) == 7 and "2" not in skipped.indices  # line 4 is the row with index 2
    with pytest.raises(DataError, match=r"dev.tsv:4: unknown label 'maybe'"):
        load_features(root, task, split, tok, 64, cache)  # strict: not answered from the skip cache
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = load_features(root, task, split, tok, 64, cache, bad_rows="skip")  # from the cache
    assert len(again) == 7
    (msg,) = [m for m in _warnings(caplog, None) if "skipped" in m]  # the dropped rows are named on every run
    assert "skipped 1 malformed row(s)" in msg and f"{path}:4 (unknown label 'maybe')" in msg


# ---- damaged cache files ------------------------------------------------------------------------------------

def _drop_last_row(p: dict) -> None:
    n = int(p["lengths"][-1])
    p["lengths"] = p["lengths"][:-1]
    p["input_ids"] = p["input_ids"][:-n]
    p["token_type_ids"] = p["token_type_ids"][:-n]
    p["labels"] = p["labels"][:-1]
    p["indices"] = p["indices"][:-1]


DAMAGE = {
    "row lengths do not add up": lambda p: p["lengths"].__setitem__(0, p["lengths"][0] + 3),
    "wrong row count vs the source": _drop_last_row,
    "wrong dtype": lambda p: p.__setitem__("input_ids", p["input_ids"].float()),
    "missing key": lambda p: p.pop("labels"),
    "another key": lambda p: p.__setitem__("key", "0" * 64),
    "ids outside the vocabulary": lambda p: p["input_ids"].__setitem__(0, 10**6),
    "labels outside the label set": lambda p: p["labels"].__setitem__(0, 7),
    "token types missing": lambda p: p.__setitem__("token_type_ids", None),
}


@pytest.mark.parametrize("damage", list(DAMAGE) + ["not a dict", "garbage bytes", "empty file", "truncated"])
def test_damaged_cache_file_warns_once_and_is_rebuilt(tok_dir, tasks, tmp_path, caplog, monkeypatch, damage):
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    tok, task, split, cache = _tok(tok_dir), tasks["rte"], tasks["rte"].splits["train"], tmp_path / "cache"
    good = load_features(root, task, split, tok, 64, cache)
    (cache_file,) = cache.glob("*.pt")
    if damage in DAMAGE:
        payload = torch.load(cache_file, weights_only=True)
        DAMAGE[damage](payload)
        torch.save(payload, cache_file)
    elif damage == "not a dict":
        torch.save(torch.zeros(3), cache_file)
    else:
        raw = cache_file.read_bytes()
        cache_file.write_bytes({"garbage bytes": b"not a torch file", "empty file": b"",
                                "truncated": raw[: len(raw) // 2]}[damage])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = load_features(root, task, split, tok, 64, cache)
    (msg,) = _warnings(caplog)
    assert str(cache_file) in msg and "rebuilding" in msg and "\n" not in msg
    assert rebuilt.indices == good.indices and rebuilt.labels == good.labels
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.input_ids, good.input_ids))
    assert list(cache.glob("*.pt")) == [cache_file]
    caplog.clear()
    with caplog.at_level(logging.WARNING), monkeypatch.context() as m:  # the next run: clean, from the cache
        _forbid_tokenizing(m)
        assert load_features(root, task, split, tok, 64, cache).indices == good.indices
    assert _warnings(caplog) == []


def test_unwritable_cache_is_a_warning(tok_dir, tasks, tmp_path, caplog):
    root = write_glue(tmp_path / "glue", tasks=("sst",))
    tok, task, split = _tok(tok_dir), tasks["sst"], tasks["sst"].splits["dev"]
    not_a_dir = tmp_path / "cache_file"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.WARNING):
        feats = load_features(root, task, split, tok, 64, not_a_dir)
    assert len(feats) == 8
    (msg,) = _warnings(caplog)
    assert "cannot write cache file" in msg and str(not_a_dir) in msg
