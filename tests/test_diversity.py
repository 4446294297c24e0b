"""experiments.rapt.diversity: word-type averaging, nearest words, and the report on three tiny trained runs."""
from __future__ import annotations

import re

import pytest
import torch

from experiments.rapt.diversity import main
from experiments.rapt.word_vectors import WordTypeAverager, row_words, top_similar
from mt_dnn.cli_utils import run_cli
from mt_dnn.train import main as train_main
from tests.glue_fixtures import write_glue

EXAMPLE_A = "the man sees the big dog in the park ."
EXAMPLE_B = "the old woman likes the red car near the house ."


def test_row_words_groups_pieces_and_skips_specials_punctuation_digits():
    text_a, text_b = "Playing cats , 42 !", "Dogs run"
    # [CLS] play ##ing cats , 42 ! [SEP] dogs run [SEP]
    word_ids = [None, 0, 0, 1, 2, 3, 4, None, 0, 1, None]
    seq_ids = [None, 0, 0, 0, 0, 0, 0, None, 1, 1, None]
    offsets = [(0, 0), (0, 4), (4, 7), (8, 12), (13, 14), (15, 17), (18, 19), (0, 0), (0, 4), (5, 8), (0, 0)]
    assert row_words(word_ids, seq_ids, offsets, (text_a, text_b)) == [
        ("playing", [1, 2]), ("cats", [3]), ("dogs", [8]), ("run", [9])]


def test_word_type_average_is_mean_over_occurrences_of_piece_means():
    torch.manual_seed(0)
    h = torch.randn(2, 4, 3)
    avg = WordTypeAverager(3)
    avg.add(h, [[("cat", [1]), ("dog", [2, 3])], [("cat", [0]), ("dog", [2])]])
    vocab, matrix = avg.result()
    assert vocab == ["cat", "dog"] and matrix.shape == (2, 3)
    torch.testing.assert_close(matrix[0], (h[0, 1] + h[1, 0]) / 2)
    # one occurrence of two pieces (their mean) and one of a single piece, each counted once
    torch.testing.assert_close(matrix[1], ((h[0, 2] + h[0, 3]) / 2 + h[1, 2]) / 2)


def test_top_similar_excludes_the_word_and_is_sorted():
    vocab = ["x", "a", "b", "c"]
    matrix = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 1.0]])
    top = top_similar(torch.tensor([1.0, 0.0]), vocab, matrix, exclude="x", k=2)
    assert [w for w, _ in top] == ["a", "c"] and top[0][1] > top[1][1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Fixture GLUE files with the example row in RTE dev, and tiny standard / SMART / RAPT runs (1 step)."""
    root = tmp_path_factory.mktemp("diversity")
    glue = write_glue(root / "glue", tasks=("rte",))
    dev = glue / "RTE" / "dev.tsv"
    dev.write_text(dev.read_text() + f"99\t{EXAMPLE_A}\t{EXAMPLE_B}\tentailment\n")
    out = {}
    for method in ("standard", "smart", "rapt"):
        out[method] = root / method
        extra = ["--rapt_max_layer", "2"] if method == "rapt" else []  # the tiny encoder has 2 layers
        assert train_main(["--tasks", "rte", "--method", method, *extra, "--max_steps", "1", "--no_eval",
                           "--batch_size", "8", "--model", str(tiny_model_dir), "--glue_dir", str(glue),
                           "--output_dir", str(out[method]), "--cache_dir", str(root / "cache")]) == 0
    out["glue"] = glue
    return out


def _args(runs, tmp_path, *extra):
    return ["--standard", str(runs["standard"]), "--smart", str(runs["smart"]), "--rapt", str(runs["rapt"]),
            "--glue_dir", str(runs["glue"]), "--out", str(tmp_path / "div.md"), "--device", "cpu", *extra]


def _table(text: str, number: int) -> list[list[str]]:
    """Rows (cells) of the Markdown table under '## Table <number>'."""
    section = text.split(f"## Table {number}:")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def test_report_has_the_three_tables_and_rapt_noise_moves_similarities(runs, tmp_path, capsys):
    assert main(_args(runs, tmp_path, "--example", "OLD WOMAN likes the red car", "--words", "woman,car",
                      "--top", "5")) == 0
    text = (tmp_path / "div.md").read_text()
    assert text.strip() in capsys.readouterr().out
    assert "Command: `python -m experiments.rapt.diversity --standard" in text and "--words woman,car" in text
    t4 = _table(text, 4)
    assert len(t4) == 6 and t4[-1][0] == "shared with Standard" and t4[-1][1] == "5/5"
    for n, word in ((5, "woman"), (6, "car")):
        assert f"closest words to **{word}**" in text
        rows = _table(text, n)
        assert len(rows) == 5 and all(len(r) == 8 for r in rows)
        for col in range(0, 8, 2):
            words = [r[col] for r in rows]
            sims = [float(r[col + 1]) for r in rows]
            assert word not in words and sims == sorted(sims, reverse=True)
        assert [r[5] for r in rows] != [r[7] for r in rows]  # RAPT vs RAPT (+noise) similarities
    # Table 4's bold marks exactly the words that are not in Standard's column
    standard = {r[1] for r in t4[:-1]}
    for r in t4[:-1]:
        for cell in r[2:]:
            assert cell.startswith("**") == (cell.strip("*") not in standard)


def test_missing_example_is_a_one_line_error(runs, tmp_path, capsys):
    assert run_cli(main, _args(runs, tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "produces more oil than any other country" in lines[0]
    assert "Traceback" not in err and not (tmp_path / "div.md").exists()


def test_word_missing_from_example_is_a_user_error(runs, tmp_path, capsys):
    assert run_cli(main, _args(runs, tmp_path, "--example", "old woman", "--words", "zebra",
                               "--max_train_rows", "4")) == 2
    assert re.search(r"^error: word 'zebra' is not in the example", capsys.readouterr().err, re.M)


def test_an_example_found_only_in_train_is_used_and_said(runs, tmp_path, capsys):
    """The paper's 'dev' example is in the official RTE train.tsv: auto looks in dev, then in train."""
    train = (runs["glue"] / "RTE" / "train.tsv").read_text().splitlines()
    line, row = next((i, r.split("\t")) for i, r in enumerate(train[1:], start=2)
                     if r.split("\t")[2] not in (runs["glue"] / "RTE" / "dev.tsv").read_text())
    sentence = row[2]
    word = next(w for w in sentence.lower().split() if w.isalpha())
    assert main(_args(runs, tmp_path, "--example", sentence, "--words", word, "--top", "3")) == 0
    assert f"the example is line {line} of `train.tsv`" in (tmp_path / "div.md").read_text()
    capsys.readouterr()
    assert run_cli(main, _args(runs, tmp_path, "--example", sentence, "--words", word,
                               "--example_split", "dev")) == 2
    assert "dev.tsv: no row's sentence contains" in capsys.readouterr().err
