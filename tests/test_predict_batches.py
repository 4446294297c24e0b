"""Prediction batches: streamed, length-sorted within chunks, cut by a row cap and a token budget, under
inference_mode; the logits equal each row's own forward (no padding, computed independently), in row order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_utils.batching import eval_batches
from data_utils.flat_rows import Features
from mt_dnn.step import batch_logits
from tests import reference_forward as ref
from tests.conftest import tiny_model


def _features(n: int, seed: int = 0, task: str = "rte", low: int = 2, high: int = 30) -> Features:
    """``n`` rows of random ids and lengths in [low, high); token types 0 then 1 (a sentence pair)."""
    g = np.random.default_rng(seed)
    ids, types = [], []
    for _ in range(n):
        k = int(g.integers(low, high))
        ids.append(g.integers(5, 100, size=k).tolist())
        types.append([0] * (k // 2) + [1] * (k - k // 2))
    return Features(task, "test", ids, types, None, [str(i) for i in range(n)])


@pytest.mark.parametrize("cap,budget,chunk,rank,world", [
    (8, None, 10_000, 0, 1), (8, 64, 10_000, 0, 1), (16, 100, 25, 0, 1), (5, 40, 7, 1, 3), (64, 1, 30, 0, 2)])
def test_batches_keep_the_cap_and_budget_and_sort_within_chunks(cap, budget, chunk, rank, world):
    feats = _features(203, seed=1)
    lengths = feats.lengths()
    batches = list(eval_batches(feats, cap, rank, world, max_tokens=budget, chunk_rows=chunk))
    mine = list(range(rank, 203, world))
    assert sorted(r for b in batches for r in b) == mine  # every row of this rank exactly once
    for b in batches:
        assert 1 <= len(b) <= cap
        assert budget is None or len(b) == 1 or len(b) * max(lengths[r] for r in b) <= budget
    # expected order, from the definition: this rank's rows in runs of `chunk`, each run stably sorted by length
    runs = [mine[i:i + chunk] for i in range(0, len(mine), chunk)]
    expected = [r for run in runs for r in sorted(run, key=lambda i: lengths[i])]
    assert [r for b in batches for r in b] == expected
    # no batch spans two chunks, and a batch ends only where the next row would break the cap or the budget
    where = {r: k for k, run in enumerate(runs) for r in run}
    assert all(len({where[r] for r in b}) == 1 for b in batches)
    for b, nxt in zip(batches, batches[1:]):
        if where[b[0]] == where[nxt[0]]:
            grown = b + [nxt[0]]
            assert len(grown) > cap or (budget is not None and len(grown) * max(lengths[r] for r in grown) > budget)


def test_batches_are_streamed():
    assert not isinstance(eval_batches(_features(5), 2), (list, tuple))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("cap,budget,chunk", [(4, None, 10_000), (64, 90, 10_000), (7, 50, 9), (3, 1, 5)])
def test_logits_equal_each_rows_own_unpadded_forward(pooling, cap, budget, chunk, monkeypatch):
    """Whatever the batches, each row's logits are those of that row alone (no padding), within float error."""
    model = tiny_model(pooling=pooling).eval()
    feats = _features(41, seed=2)
    with torch.no_grad():
        alone = torch.cat([ref.logits(model, {"task": "rte", "input_ids": feats.input_ids[i][None],
                                              "attention_mask": torch.ones(1, len(feats.input_ids[i]),
                                                                           dtype=torch.long),
                                              "token_type_ids": feats.token_type_ids[i][None]})
                           for i in range(len(feats))]).numpy()
    assert np.abs(alone - alone[0]).max() > 1e-3  # the rows differ: the check is not vacuous
    import data_utils.batching as batching

    monkeypatch.setattr(batching, "EVAL_CHUNK_ROWS", chunk)
    got = np.zeros_like(alone)
    for rows, logits in batch_logits(model, feats, cap, torch.device("cpu"), pad_id=0, max_tokens=budget):
        got[rows] = logits.numpy()
    np.testing.assert_allclose(got, alone, atol=1e-5)


def test_logits_come_from_inference_mode_and_training_goes_on_after():
    model = tiny_model()
    model.train()
    feats = _features(9, seed=3)
    out = list(batch_logits(model, feats, 4, torch.device("cpu"), pad_id=0))
    assert out and all(torch.is_inference(logits) for _, logits in out)
    assert model.training  # the mode it found
    batch = {"task": "rte", "input_ids": feats.input_ids[0][None], "token_type_ids": feats.token_type_ids[0][None],
             "attention_mask": torch.ones(1, len(feats.input_ids[0]), dtype=torch.long)}
    model(batch).sum().backward()  # no inference tensor was left behind in the model
    assert model.encoder.embeddings.word_embeddings.weight.grad is not None


def test_a_non_finite_output_is_an_error_naming_the_first_row_in_file_order():
    """One row's NaN output (and one infinite score) among length-sorted batches: the error counts them and names
    the first row in file order, for a regression task as for classification."""
    import torch
    from torch import nn

    from data_utils.flat_rows import Features
    from data_utils.glue import DataError
    from data_utils.task_def import load_task_defs
    from mt_dnn.step import predict

    lengths = [5, 2, 7, 3, 6, 4]
    feats = Features("stsb", "dev", [list(range(1, n + 1)) for n in lengths], None, [0.0] * 6, list(range(6)))

    class Scores(nn.Module):  # the score of a row is its length; rows 4 and 1 are broken
        task_defs = {"stsb": load_task_defs()["stsb"]}

        def forward(self, batch):
            n = batch["attention_mask"].sum(-1).float()
            return torch.where(n == 6, float("nan"), torch.where(n == 2, float("inf"), n))[:, None]

    with pytest.raises(DataError) as err:
        predict(Scores(), feats, batch_size=2, device=torch.device("cpu"), pad_id=0)
    assert str(err.value).startswith("stsb dev: the model's output is not a finite number for 2 of 6 row(s) "
                                     "(first: row 1)")
    fine = Features("stsb", "dev", [list(range(1, n + 1)) for n in (5, 3, 4)], None, [0.0] * 3, [0, 1, 2])
    assert predict(Scores(), fine, batch_size=2, device=torch.device("cpu"), pad_id=0).tolist() == [5.0, 3.0, 4.0]
