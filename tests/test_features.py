"""Tests of data_utils.features and batching.collate with a tiny WordPiece tokenizer over the fixture words."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import data_utils.features as features_mod
from data_utils.batching import collate
from data_utils.features import Features, load_features, tokenize_examples, tokenizer_fingerprint
from data_utils.glue import DataError, read_split
from tests.glue_fixtures import VOCAB_WORDS, write_glue, write_tiny_tokenizer

MAX_LEN = 64


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def fp(tokenizer) -> str:
    """The tokenizer's fingerprint, computed once and passed to every cached call (as the trainer does)."""
    return tokenizer_fingerprint(tokenizer)


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue") / "glue")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _expected_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a fixture sentence: every word (and '.') is one vocabulary entry."""
    return [tokenizer.convert_tokens_to_ids(w) for w in text.split()]


# ---- the tokenizer fixture ----------------------------------------------------------------------------------

def test_tiny_tokenizer_knows_every_fixture_word(tokenizer):
    assert tokenizer.pad_token_id == 0 and tokenizer.cls_token_id == 2 and tokenizer.sep_token_id == 3
    ids = tokenizer.convert_tokens_to_ids(VOCAB_WORDS + ["."])
    assert tokenizer.unk_token_id not in ids
    assert len(set(ids)) == len(ids)
    assert tokenizer("Good CAT .")["input_ids"] == [2] + _expected_ids(tokenizer, "good cat .") + [3]


# ---- encoding -----------------------------------------------------------------------------------------------

def test_single_sentence_encoding(glue, tasks, tokenizer):
    task = tasks["cola"]
    split = task.splits["train"]
    examples = read_split(glue, task, split)
    feats = load_features(glue, task, split, tokenizer, MAX_LEN)
    assert isinstance(feats, Features) and len(feats) == len(examples)
    assert feats.task == "cola" and feats.split == "train"
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for e, ids, types in zip(examples, feats.input_ids, feats.token_type_ids):
        assert ids.dtype == torch.long and ids.dim() == 1
        assert ids.tolist() == [cls] + _expected_ids(tokenizer, e.text_a) + [sep]
        assert types.tolist() == [0] * len(ids)
    assert feats.lengths() == [len(x) for x in feats.input_ids]


def test_pair_encoding(glue, tasks, tokenizer):
    task = tasks["rte"]
    split = task.splits["dev"]
    examples = read_split(glue, task, split)
    feats = load_features(glue, task, split, tokenizer, MAX_LEN)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for e, ids, types in zip(examples, feats.input_ids, feats.token_type_ids):
        a, b = _expected_ids(tokenizer, e.text_a), _expected_ids(tokenizer, e.text_b)
        assert ids.tolist() == [cls] + a + [sep] + b + [sep]
        assert types.tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_truncation_to_max_len(glue, tasks, tokenizer):
    for name, split_name in (("rte", "train"), ("sst", "train"), ("stsb", "dev")):
        task = tasks[name]
        split = task.splits[split_name]
        full = load_features(glue, task, split, tokenizer, MAX_LEN)
        assert max(full.lengths()) > 8  # the fixture has rows longer than the limit below
        short = load_features(glue, task, split, tokenizer, 8)
        assert max(short.lengths()) == 8 and len(short) == len(full)
        for ids, types, whole in zip(short.input_ids, short.token_type_ids, full.input_ids):
            assert ids[0].item() == tokenizer.cls_token_id and ids[-1].item() == tokenizer.sep_token_id
            if len(whole) <= 8:
                assert torch.equal(ids, whole)
            if task.input == "pair":  # both sentences survive (longest first), each closed by [SEP]
                assert (ids == tokenizer.sep_token_id).sum().item() == 2
                assert types[-1].item() == 1 and types[0].item() == 0


def test_labels_and_indices_kept(glue, tasks, tokenizer):
    for name in ("rte", "stsb", "cola", "mrpc"):
        task = tasks[name]
        for split in task.splits.values():
            examples = read_split(glue, task, split)
            feats = load_features(glue, task, split, tokenizer, MAX_LEN)
            assert feats.indices == [e.index for e in examples]
            if split.kind == "test":
                assert feats.labels is None
            else:
                assert feats.labels == [e.label for e in examples]


def test_subset(glue, tasks, tokenizer):
    task = tasks["mrpc"]
    feats = load_features(glue, task, task.splits["train"], tokenizer, MAX_LEN)
    sub = feats.subset([3, 0])
    assert len(sub) == 2 and sub.labels == [feats.labels[3], feats.labels[0]]
    assert torch.equal(sub.input_ids[0], feats.input_ids[3]) and sub.indices == [feats.indices[3], feats.indices[0]]


def test_fingerprint_is_stable_across_tokenizer_calls(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    before = tokenizer_fingerprint(tok)
    tok(["a cat ."], None, truncation=True, max_length=MAX_LEN, padding=False)
    assert tokenizer_fingerprint(tok) == before


def test_cache_hit_without_explicit_fingerprint(tmp_path, tasks, tokenizer_dir, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    task, split = tasks["rte"], tasks["rte"].splits["dev"]
    load_features(root, task, split, tok, MAX_LEN, cache_dir=tmp_path / "cache")
    _forbid_tokenizing(monkeypatch)
    load_features(root, task, split, tok, MAX_LEN, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_not_a_fast_tokenizer_is_refused():
    with pytest.raises(DataError, match="fast tokenizer"):
        tokenizer_fingerprint(object())


# ---- the cache ----------------------------------------------------------------------------------------------

def _forbid_tokenizing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("tokenize_examples called although the cache should have been used")
    monkeypatch.setattr(features_mod, "tokenize_examples", boom)


def _same(a: Features, b: Features) -> None:
    assert (a.task, a.split, a.indices) == (b.task, b.split, b.indices)
    assert len(a) == len(b)
    assert all(torch.equal(x, y) and y.dtype == torch.long for x, y in zip(a.input_ids, b.input_ids))
    assert all(torch.equal(x, y) and y.dtype == torch.long for x, y in zip(a.token_type_ids, b.token_type_ids))
    assert a.labels == b.labels  # exact, floats (STS-B) included


@pytest.mark.parametrize("name", ["rte", "cola", "mrpc"])
def test_cache_written_then_loaded(tmp_path, tasks, tokenizer, fp, monkeypatch, name):
    root = write_glue(tmp_path / "glue", tasks=(name,))
    cache = tmp_path / "cache" / "nested"
    task = tasks[name]
    for split in task.splits.values():
        load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
        files = sorted(cache.glob(f"{name}-{split.name}-*.pt"))
        assert len(files) == 1
    assert not list(cache.glob("*.tmp"))
    # the second call loads the cache (tokenizing would raise) and equals freshly tokenized features
    for split in task.splits.values():
        fresh = load_features(root, task, split, tokenizer, MAX_LEN)
        with monkeypatch.context() as m:
            _forbid_tokenizing(m)
            cached = load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
        _same(fresh, cached)
    assert len(list(cache.iterdir())) == len(task.splits)


def test_cache_regression_labels(tmp_path, tasks, tokenizer, fp, monkeypatch):
    """STS-B scores come back from the cache as the same floats, bit for bit."""
    root = write_glue(tmp_path / "glue", tasks=("stsb",))
    task, split = tasks["stsb"], tasks["stsb"].splits["train"]
    cache = tmp_path / "cache"
    fresh = load_features(root, task, split, tokenizer, MAX_LEN, cache, fingerprint=fp)
    _forbid_tokenizing(monkeypatch)
    cached = load_features(root, task, split, tokenizer, MAX_LEN, cache, fingerprint=fp)
    _same(fresh, cached)
    assert all(isinstance(x, float) for x in cached.labels)


def test_changed_file_or_max_len_gives_a_new_cache_file(tmp_path, tasks, tokenizer, fp):
    root = write_glue(tmp_path / "glue", tasks=("sst",))
    cache = tmp_path / "cache"
    task, split = tasks["sst"], tasks["sst"].splits["dev"]
    load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
    assert len(list(cache.glob("*.pt"))) == 1

    shorter = load_features(root, task, split, tokenizer, 6, cache_dir=cache, fingerprint=fp)
    assert len(list(cache.glob("*.pt"))) == 2 and max(shorter.lengths()) == 6

    path = root / "SST-2" / "dev.tsv"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[1] = "great cat .\t1"
    path.write_text("\n".join(lines), encoding="utf-8")
    changed = load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
    assert len(list(cache.glob("*.pt"))) == 3
    assert changed.input_ids[0].tolist() == [2] + _expected_ids(tokenizer, "great cat .") + [3]


def test_changed_tokenizer_gives_a_new_cache_file(tmp_path, tasks, tokenizer, fp):
    from transformers import AutoTokenizer

    root = write_glue(tmp_path / "glue", tasks=("sst",))
    cache = tmp_path / "cache"
    task, split = tasks["sst"], tasks["sst"].splits["dev"]
    load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
    other = AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path / "tok2")))
    other.add_tokens(["zebra"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    load_features(root, task, split, other, MAX_LEN, cache_dir=cache,
                  fingerprint=tokenizer_fingerprint(other))
    assert len(list(cache.glob("*.pt"))) == 2


def test_corrupt_cache_file_is_rebuilt(tmp_path, tasks, tokenizer, fp, monkeypatch):
    root = write_glue(tmp_path / "glue", tasks=("rte",))
    cache = tmp_path / "cache"
    task, split = tasks["rte"], tasks["rte"].splits["train"]
    good = load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
    (cache_file,) = cache.glob("*.pt")
    for damage in (b"this is not a torch file", cache_file.read_bytes()[:50]):
        cache_file.write_bytes(damage)
        calls = []
        real = features_mod.tokenize_examples

        def counting(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(features_mod, "tokenize_examples", counting)
            rebuilt = load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
        assert calls == [1]
        _same(good, rebuilt)
        assert list(cache.glob("*.pt")) == [cache_file]
        with monkeypatch.context() as m:  # the rewritten file is good again
            _forbid_tokenizing(m)
            again = load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
            _same(good, again)


def test_nothing_written_inside_the_glue_dir(tmp_path, tasks, tokenizer, fp):
    root = write_glue(tmp_path / "glue")
    before = _snapshot(root)
    cache = tmp_path / "cache"
    for name in ("cola", "sst", "mrpc", "stsb", "rte", "wnli"):
        task = tasks[name]
        for split in task.splits.values():
            load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
            load_features(root, task, split, tokenizer, MAX_LEN, cache_dir=cache, fingerprint=fp)
            load_features(root, task, split, tokenizer, MAX_LEN)
    assert _snapshot(root) == before
    assert len(list(cache.glob("*.pt"))) == sum(len(tasks[n].splits) for n in
                                                ("cola", "sst", "mrpc", "stsb", "rte", "wnli"))


def test_missing_file_with_cache_reports_data_error(tmp_path, tasks, tokenizer):
    task = tasks["rte"]
    with pytest.raises(DataError, match="not found"):
        load_features(tmp_path / "nowhere", task, task.splits["dev"], tokenizer, MAX_LEN, cache_dir=tmp_path / "c")


def test_tokenize_examples_directly(glue, tasks, tokenizer):
    task = tasks["wnli"]
    split = task.splits["test"]
    examples = read_split(glue, task, split)
    feats = tokenize_examples(tokenizer, task, split, examples, MAX_LEN)
    assert feats.labels is None and feats.indices == [e.index for e in examples]


# ---- collate: dynamic padding -------------------------------------------------------------------------------

def test_collate_pads_to_the_batch_longest_row(glue, tasks, tokenizer):
    task = tasks["rte"]
    feats = load_features(glue, task, task.splits["train"], tokenizer, MAX_LEN)
    lengths = feats.lengths()
    order = sorted(range(len(feats)), key=lambda i: lengths[i])
    short_rows, long_rows = order[:4], order[-4:]
    assert lengths[short_rows[-1]] < lengths[long_rows[-1]]
    for rows in (short_rows, long_rows, [order[0], order[-1], order[5]]):
        batch = collate(feats, rows, pad_id=tokenizer.pad_token_id, regression=False)
        longest = max(lengths[i] for i in rows)
        assert batch["task"] == "rte"
        assert batch["input_ids"].shape == (len(rows), longest) and longest < MAX_LEN
        assert batch["attention_mask"].shape == batch["token_type_ids"].shape == (len(rows), longest)
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
        for j, i in enumerate(rows):
            n = lengths[i]
            assert batch["attention_mask"][j].tolist() == [1] * n + [0] * (longest - n)
            assert batch["input_ids"][j, :n].tolist() == feats.input_ids[i].tolist()
            assert (batch["input_ids"][j, n:] == tokenizer.pad_token_id).all()
            assert batch["token_type_ids"][j, :n].tolist() == feats.token_type_ids[i].tolist()
            assert (batch["token_type_ids"][j, n:] == 0).all()
        assert batch["labels"].dtype == torch.long
        assert batch["labels"].tolist() == [feats.labels[i] for i in rows]


def test_collate_pad_id_is_used(glue, tasks, tokenizer):
    task = tasks["cola"]
    feats = load_features(glue, task, task.splits["dev"], tokenizer, MAX_LEN)
    lengths = feats.lengths()
    rows = [lengths.index(min(lengths)), lengths.index(max(lengths))]
    batch = collate(feats, rows, pad_id=99, regression=False)
    assert batch["input_ids"][0, -1].item() == 99 and batch["attention_mask"][0, -1].item() == 0


def test_collate_regression_labels_are_float(glue, tasks, tokenizer):
    task = tasks["stsb"]
    feats = load_features(glue, task, task.splits["dev"], tokenizer, MAX_LEN)
    batch = collate(feats, [0, 1, 2], pad_id=0, regression=True)
    assert batch["labels"].dtype == torch.float
    assert batch["labels"].tolist() == pytest.approx([feats.labels[i] for i in (0, 1, 2)])


def test_collate_test_split_has_no_labels(glue, tasks, tokenizer):
    task = tasks["sst"]
    feats = load_features(glue, task, task.splits["test"], tokenizer, MAX_LEN)
    batch = collate(feats, list(range(len(feats))), pad_id=0, regression=False)
    assert "labels" not in batch and batch["input_ids"].shape[0] == len(feats)


def test_collate_without_token_types(glue, tasks, tokenizer):
    task = tasks["sst"]
    feats = load_features(glue, task, task.splits["dev"], tokenizer, MAX_LEN)
    no_types = Features(feats.task, feats.split, feats.input_ids, None, feats.labels, feats.indices)
    batch = collate(no_types, [0, 1], pad_id=0, regression=False)
    assert "token_type_ids" not in batch
