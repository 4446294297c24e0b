"""Small GLUE-format files written by the tests themselves, and a tiny WordPiece tokenizer over their words.

``write_glue`` writes, for each chosen task, train/dev/test files in the exact layout of the official GLUE
distribution (CoLA train/dev without a header, MRPC's byte-order mark, STS-B's ten columns, MNLI's 12/16/10
columns with matched and mismatched dev and test, QQP's rows cut in two by a line break, QNLI, AX's
``diagnostic.tsv``, ...); the six small tasks by default, MNLI/QQP/QNLI/AX when asked for. The text
is made of a small fixed vocabulary (``VOCAB_WORDS``) and the labels follow simple rules (a cue word, word
overlap between the two sentences), so a model can learn them. Everything is drawn from seeded generators:
the same call writes the same bytes.
"""
from __future__ import annotations

import inspect
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ALL_TASKS = ("rte", "mrpc", "stsb", "cola", "sst", "wnli")
LARGE_TASKS = ("mnli", "qqp", "qnli", "ax")  # written only when asked for (write_glue(root, tasks=...))
DATA_DIRS = {"cola": "CoLA", "sst": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE", "wnli": "WNLI",
             "mnli": "MNLI", "qqp": "QQP", "qnli": "QNLI", "ax": "diagnostic"}

# Cue words that decide single-sentence labels (positive / negative).
POSITIVE_WORDS = ["good", "great", "happy", "nice"]
NEGATIVE_WORDS = ["bad", "sad", "awful", "poor"]
FILLER_WORDS = [
    "the", "a", "cat", "dog", "man", "woman", "boy", "girl", "bird", "fish", "car", "house", "tree", "ball",
    "book", "food", "water", "park", "road", "city", "sees", "eats", "likes", "runs", "walks", "plays",
    "reads", "finds", "makes", "has", "in", "on", "with", "near", "to", "and", "big", "small", "red", "blue",
    "old", "new", "fast", "slow", "very", "is", "was",
]
VOCAB_WORDS: list[str] = FILLER_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS
PUNCTUATION = [".", ",", "?", "!", "'", "-"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

_SEEDS = {"cola": 11, "sst": 12, "mrpc": 13, "stsb": 14, "rte": 15, "wnli": 16, "mnli": 17, "qqp": 18, "qnli": 19,
          "ax": 20}
MNLI_LABELS = ("contradiction", "entailment", "neutral")
MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
# QQP train lines whose question holds a line break in the source data: the row is cut into two short lines
# (5 and 2 fields instead of 6). write_glue puts this many such rows into QQP's train file.
QQP_BROKEN_ROWS = 2


# ---- sentences ----------------------------------------------------------------------------------------------

def _words(rng: random.Random, lo: int = 3, hi: int = 8) -> list[str]:
    return [rng.choice(FILLER_WORDS) for _ in range(rng.randint(lo, hi))]


def _sentence(words: list[str]) -> str:
    return " ".join(words) + " ."


def _cued(rng: random.Random, positive: bool) -> str:
    """A sentence holding one positive cue word (label 1) or one negative cue word (label 0)."""
    words = _words(rng)
    cue = rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
    words.insert(rng.randint(0, len(words)), cue)
    return _sentence(words)


def _pair(rng: random.Random, related: bool) -> tuple[str, str]:
    """Two sentences: the second a sub-sequence of the first (related) or independent words (not)."""
    first = _words(rng, 5, 9)
    if related:
        keep = sorted(rng.sample(range(len(first)), rng.randint(2, len(first) - 1)))
        second = [first[i] for i in keep]
    else:
        unused = [w for w in FILLER_WORDS if w not in first]
        second = [rng.choice(unused) for _ in range(rng.randint(3, 6))]
    return _sentence(first), _sentence(second)


def _overlap_score(a: str, b: str) -> float:
    wa, wb = set(a.split()) - {"."}, set(b.split()) - {"."}
    return 5.0 * len(wa & wb) / max(1, len(wa | wb))


# ---- writers ------------------------------------------------------------------------------------------------

def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(line + "\n" for line in lines))


def _labels(n: int) -> list[int]:
    """Alternating 1/0 so every split with two or more rows holds both classes."""
    return [1 - (i % 2) for i in range(n)]


def _cola(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    for split in ("train", "dev"):
        rows = []
        for lab in _labels(n[split]):
            source = rng.choice(["gj04", "bc01", "ad03", "c-05"])
            rows.append(f"{source}\t{lab}\t{'' if lab else '*'}\t{_cued(rng, bool(lab))}")
        _write(d / f"{split}.tsv", rows)  # CoLA train/dev: no header line
    _write(d / "test.tsv", ["index\tsentence"] +
           [f"{i}\t{_cued(rng, bool(lab))}" for i, lab in enumerate(_labels(n["test"]))])


def _sst(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    for split in ("train", "dev"):
        _write(d / f"{split}.tsv", ["sentence\tlabel"] +
               [f"{_cued(rng, bool(lab))}\t{lab}" for lab in _labels(n[split])])
    _write(d / "test.tsv", ["index\tsentence"] +
           [f"{i}\t{_cued(rng, bool(lab))}" for i, lab in enumerate(_labels(n["test"]))])


def _mrpc(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    def ids() -> tuple[int, int]:
        a = rng.randint(100000, 3999999)
        return a, a + rng.randint(1, 500)

    for split in ("train", "dev"):
        rows = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for lab in _labels(n[split]):
            a, b = ids()
            s1, s2 = _pair(rng, bool(lab))
            rows.append(f"{lab}\t{a}\t{b}\t{s1}\t{s2}")
        _write(d / f"{split}.tsv", rows)
    rows = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i, lab in enumerate(_labels(n["test"])):
        a, b = ids()
        s1, s2 = _pair(rng, bool(lab))
        rows.append(f"{i}\t{a}\t{b}\t{s1}\t{s2}")
    _write(d / "test.tsv", rows)


def _stsb(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    for split in ("train", "dev", "test"):
        rows = [head + ("\tscore" if split != "test" else "")]
        for i, lab in enumerate(_labels(n[split])):
            s1, s2 = _pair(rng, bool(lab))
            meta = f"{i}\tmain-captions\tMSRvid\t2012test\t{rng.randint(0, 9999):04d}\tnone\tnone"
            score = "" if split == "test" else f"\t{_overlap_score(s1, s2):.3f}"
            rows.append(f"{meta}\t{s1}\t{s2}{score}")
        _write(d / f"{split}.tsv", rows)


def _nli(d: Path, rng: random.Random, n: dict[str, int], names: tuple[str, str]) -> None:
    """RTE / WNLI: ``index sentence1 sentence2 label``; ``names`` = (related label, unrelated label)."""
    for split in ("train", "dev", "test"):
        rows = ["index\tsentence1\tsentence2" + ("\tlabel" if split != "test" else "")]
        for i, lab in enumerate(_labels(n[split])):
            s1, s2 = _pair(rng, bool(lab))
            tail = "" if split == "test" else "\t" + (names[0] if lab else names[1])
            rows.append(f"{i}\t{s1}\t{s2}{tail}")
        _write(d / f"{split}.tsv", rows)


def _parses(sentence: str) -> tuple[str, str]:
    """MNLI's two parse columns of a sentence: a right-branching binary bracketing and a flat Penn-style tree."""
    words = sentence.split()
    binary = words[-1]
    for w in reversed(words[:-1]):
        binary = f"( {w} {binary} )"
    return binary, "(ROOT (S " + " ".join(f"(NN {w})" for w in words) + "))"


def _mnli_label(i: int) -> str:
    """Labels cycle through all three classes; the pair's relation follows it (entailment: related)."""
    return MNLI_LABELS[i % 3]


def _mnli(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    """MNLI: train 12 columns (label1, gold_label); dev_matched/mismatched 16 (label1..label5, gold_label);
    test_matched/mismatched 10; genres differ between matched and mismatched as in the official files."""
    genres = {"matched": ("fiction", "government", "slate"), "mismatched": ("letters", "oup", "verbatim")}
    for split, kind, genre in (("train", "train", "matched"), ("dev_matched", "dev", "matched"),
                               ("dev_mismatched", "dev", "mismatched"), ("test_matched", "test", "matched"),
                               ("test_mismatched", "test", "mismatched")):
        extra = {"train": ["label1", "gold_label"], "dev": [f"label{k}" for k in range(1, 6)] + ["gold_label"],
                 "test": []}[kind]
        rows = ["\t".join(MNLI_COLUMNS + extra)]
        for i in range(n[kind]):
            gold = _mnli_label(i)
            s1, s2 = _pair(rng, gold == "entailment")
            prompt = 10000 + i
            (b1, p1), (b2, p2) = _parses(s1), _parses(s2)
            fields = [str(i), str(prompt), f"{prompt}{gold[0]}", genres[genre][i % 3], b1, b2, p1, p2, s1, s2]
            if kind == "train":
                fields += [gold, gold]
            elif kind == "dev":  # five annotators, the first one dissenting on every other row; gold: the majority
                fields += [MNLI_LABELS[(i + 1) % 3] if i % 2 else gold, gold, gold, gold, gold, gold]
            rows.append("\t".join(fields))
        _write(d / f"{split}.tsv", rows)


def _qqp(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    """QQP: train/dev ``id qid1 qid2 question1 question2 is_duplicate``; test ``id question1 question2``. The train
    file also holds QQP_BROKEN_ROWS rows cut in two by a line break inside question2 (two short lines each)."""
    for split in ("train", "dev"):
        rows = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
        for i, lab in enumerate(_labels(n[split])):
            q1, q2 = (q.replace(" .", " ?") for q in _pair(rng, bool(lab)))
            rows.append(f"{i}\t{2 * i + 1}\t{2 * i + 2}\t{q1}\t{q2}\t{lab}")
        if split == "train":
            for k in range(QQP_BROKEN_ROWS):
                i = n[split] + k
                q1, q2 = (q.replace(" .", " ?") for q in _pair(rng, True))
                head, tail = q2.split(" ", 1)
                rows.insert(3 + 4 * k, f"{i}\t{2 * i + 1}\t{2 * i + 2}\t{q1}\t{head}")
                rows.insert(4 + 4 * k, f"{tail}\t1")
        _write(d / f"{split}.tsv", rows)
    rows = ["id\tquestion1\tquestion2"]
    for i, lab in enumerate(_labels(n["test"])):
        q1, q2 = (q.replace(" .", " ?") for q in _pair(rng, bool(lab)))
        rows.append(f"{i}\t{q1}\t{q2}")
    _write(d / "test.tsv", rows)


def _qnli(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    """QNLI: ``index question sentence label`` (entailment / not_entailment); test without the label."""
    for split in ("train", "dev", "test"):
        rows = ["index\tquestion\tsentence" + ("\tlabel" if split != "test" else "")]
        for i, lab in enumerate(_labels(n[split])):
            s, q = _pair(rng, bool(lab))
            tail = "" if split == "test" else "\t" + ("entailment" if lab else "not_entailment")
            rows.append(f"{i}\t{q.replace(' .', ' ?')}\t{s}{tail}")
        _write(d / f"{split}.tsv", rows)


def _ax(d: Path, rng: random.Random, n: dict[str, int]) -> None:
    """AX (the diagnostic set): one test file ``diagnostic.tsv``, ``index sentence1 sentence2``."""
    rows = ["index\tsentence1\tsentence2"]
    for i, lab in enumerate(_labels(n["test"])):
        s1, s2 = _pair(rng, bool(lab))
        rows.append(f"{i}\t{s1}\t{s2}")
    _write(d / "diagnostic.tsv", rows)


def write_glue(root: Path, tasks=ALL_TASKS, n_train: int = 24, n_dev: int = 8, n_test: int = 6) -> Path:
    """Write small official-layout GLUE files for ``tasks`` under ``root`` (created); returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = {"train": n_train, "dev": n_dev, "test": n_test}
    for task in tasks:
        if task not in DATA_DIRS:
            raise ValueError(f"no fixture for task {task!r}; choose from {', '.join(ALL_TASKS + LARGE_TASKS)}")
        d = root / DATA_DIRS[task]
        rng = random.Random(_SEEDS[task])
        if task == "cola":
            _cola(d, rng, n)
        elif task == "sst":
            _sst(d, rng, n)
        elif task == "mrpc":
            _mrpc(d, rng, n)
        elif task == "stsb":
            _stsb(d, rng, n)
        elif task == "rte":
            _nli(d, rng, n, ("entailment", "not_entailment"))
        elif task in ("mnli", "qqp", "qnli", "ax"):
            {"mnli": _mnli, "qqp": _qqp, "qnli": _qnli, "ax": _ax}[task](d, rng, n)
        else:  # wnli
            _nli(d, rng, n, ("1", "0"))
    return root


# ---- tokenizer ----------------------------------------------------------------------------------------------

def write_tiny_tokenizer(directory) -> Path:
    """Write ``vocab.txt`` (specials, VOCAB_WORDS, punctuation) and save a BERT fast tokenizer over it."""
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    tokens = SPECIAL_TOKENS + VOCAB_WORDS + PUNCTUATION
    assert len(set(tokens)) == len(tokens), "fixture vocabulary repeats a token"
    vocab_file.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    params = inspect.signature(BertTokenizerFast.__init__).parameters
    if "vocab_file" in params:  # transformers 4.x
        tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    else:  # transformers 5.x silently ignores vocab_file=; the vocabulary goes in as ``vocab``
        tok = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    probe = tok.convert_tokens_to_ids(VOCAB_WORDS[0])
    if probe != tokens.index(VOCAB_WORDS[0]):
        raise RuntimeError("the tiny tokenizer did not take the fixture vocabulary")
    tok.save_pretrained(str(directory))
    return directory
