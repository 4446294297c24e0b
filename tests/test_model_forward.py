"""Predictions on padded batches equal each row's own prediction without padding, computed independently.

The expected logits come from ``tests.reference_forward`` (our own loop over the encoder's blocks, our own
attention mask, pooling and head by hand) run on each row alone, cut to its real length: a row's prediction
must not depend on the rows it is batched with, on how much padding they add, or on the padding ids. A model
that attended to padding, pooled over it, or dropped the token types would change the padded rows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_utils.flat_rows import Features
from data_utils.glue import DataError
from mt_dnn.step import predict
from tests import reference_forward as ref
from tests.conftest import ARCHS, tiny_model

LENGTHS = [4, 9, 6, 12, 3]  # real tokens of each row; the batch pads every row to 12


def _rows(arch: str, seed: int = 0) -> list[dict]:
    """Unpadded single-row batches with token types 0 then 1 (a sentence pair) where the encoder has them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(5, 100, (1, n), generator=g)
        row = {"task": "rte", "input_ids": ids, "attention_mask": torch.ones(1, n, dtype=torch.long)}
        if arch not in ("distilbert", "roberta"):
            types = torch.zeros(1, n, dtype=torch.long)
            types[0, n // 2:] = 1
            row["token_type_ids"] = types
        out.append(row)
    return out


def _pad(rows: list[dict], pad_id: int) -> dict:
    """The rows padded on the right to the longest one, with ``pad_id`` (ids), 0 (mask and token types)."""
    width = max(r["input_ids"].shape[1] for r in rows)
    batch = {"task": rows[0]["task"]}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in rows[0]:
            batch[key] = torch.cat([torch.nn.functional.pad(r[key], (0, width - r[key].shape[1]), value=fill)
                                    for r in rows])
    return batch


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_logits_equal_each_rows_unpadded_logits(arch, pooling):
    model = tiny_model(arch=arch, pooling=pooling).eval()
    rows = _rows(arch)
    with torch.no_grad():
        alone = torch.cat([ref.logits(model, r) for r in rows])  # independent forward, no padding at all
        for pad_id in (0, 7):  # the padding ids must not matter either
            batched = model(_pad(rows, pad_id))
            assert torch.allclose(batched, alone, atol=1e-5), (arch, pooling, pad_id, (batched - alone).abs().max())
    # the rows do differ from one another (the check is not vacuous)
    assert (alone - alone[0]).abs().max() > 1e-3


def test_regression_head_on_padded_rows_equals_unpadded_rows():
    model = tiny_model(tasks=("stsb",), pooling="mean").eval()
    rows = [dict(r, task="stsb") for r in _rows("bert", seed=3)]
    with torch.no_grad():
        alone = torch.cat([ref.logits(model, r) for r in rows])
        batched = model(_pad(rows, 0))
    assert batched.shape == (len(LENGTHS), 1)
    assert torch.allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize("regression", [False, True], ids=["cls", "reg"])
def test_predict_sorts_pads_and_restores_file_order(regression):
    """``mt_dnn.step.predict`` (length-sorted batches of 2, padded): each row's class (argmax) or score equals
    the prediction of that row alone, in file order."""
    task = "stsb" if regression else "rte"
    model = tiny_model(tasks=(task,), pooling="mean")
    rows = _rows("bert", seed=5)
    features = Features(task, "dev", [r["input_ids"][0].tolist() for r in rows],
                        [r["token_type_ids"][0].tolist() for r in rows], None, [str(i) for i in range(len(rows))])
    out = predict(model, features, batch_size=2, device=torch.device("cpu"), pad_id=0)
    assert model.training  # predict restores the mode it found
    model.eval()
    with torch.no_grad():
        alone = torch.cat([ref.logits(model, dict(r, task=task)) for r in rows])
    expected = alone.squeeze(-1).double().numpy() if regression else alone.argmax(-1).numpy()
    if regression:
        np.testing.assert_allclose(out, expected, atol=1e-5)
    else:
        assert out.tolist() == expected.tolist()
        margins = (alone[:, 0] - alone[:, 1]).abs()
        assert margins.min() > 1e-4  # no row is a near tie that float error could flip


def _regression_features(n: int = 7, seed: int = 9) -> tuple:
    """STS-B features of ``n`` rows of varied lengths and the model's scores for each row alone (reference)."""
    model = tiny_model(tasks=("stsb",), pooling="mean").eval()
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, 100, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g) for _ in range(n)]
    features = Features("stsb", "dev", [r.tolist() for r in rows], [[0] * len(r) for r in rows], None,
                        [str(i) for i in range(n)])
    with torch.no_grad():
        alone = [ref.logits(model, {"task": "stsb", "input_ids": r[None], "attention_mask": torch.ones(1, len(r)),
                                    "token_type_ids": torch.zeros(1, len(r), dtype=torch.long)}).item() for r in rows]
    return model, features, np.array(alone)


def test_predict_gathers_every_ranks_rows(monkeypatch):
    """Under DDP each rank predicts rows rank::world_size and the shards are gathered: rank 0 of two sends only
    its own rows and ends with every row's score (rank 1's shard written out here from the reference)."""
    model, features, alone = _regression_features()
    sent = []

    broken_on_rank1: list[int] = []

    def all_gather_object(shards, mine):
        sent.append(mine)
        shards[0] = mine
        shards[1] = (list(range(1, len(alone), 2)), alone[1::2].tolist(), broken_on_rank1)

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    out = predict(model, features, batch_size=2, device=torch.device("cpu"), pad_id=0, rank=0, world_size=2)
    assert sorted(sent[0][0]) == list(range(0, len(alone), 2))  # rank 0 predicted its own rows only
    assert sent[0][2] == []  # and found no non-finite output among them
    np.testing.assert_allclose(out, alone, atol=1e-5)
    assert out.dtype == np.float64
    # a non-finite output on the other rank is an error here too (every rank stops, none reports a score)
    broken_on_rank1.append(3)
    with pytest.raises(DataError, match=r"not a finite number for 1 of \d+ row\(s\) \(first: row 3\)"):
        predict(model, features, batch_size=2, device=torch.device("cpu"), pad_id=0, rank=0, world_size=2)


def test_predict_returns_class_ids_as_integers():
    model = tiny_model(pooling="mean")
    rows = _rows("bert", seed=5)
    features = Features("rte", "dev", [r["input_ids"][0].tolist() for r in rows],
                        [r["token_type_ids"][0].tolist() for r in rows], None, [str(i) for i in range(len(rows))])
    out = predict(model, features, batch_size=2, device=torch.device("cpu"), pad_id=0)
    assert out.dtype == np.int64 and set(out.tolist()) <= {0, 1}


def test_batch_logits_keeps_the_token_budget():
    """Rows of 8 tokens, at most 16 rows a batch: an explicit budget of 40 padded tokens gives batches of 5 rows;
    the automatic budget is mt_dnn.step.CPU_EVAL_TOKENS tokens on the CPU and none on a GPU."""
    from mt_dnn import step

    model = tiny_model(tasks=("stsb",), pooling="mean")
    features = Features("stsb", "dev", [[7] * 8 for _ in range(30)], [[0] * 8 for _ in range(30)], None,
                        [str(i) for i in range(30)])
    sizes = [len(rows) for rows, _ in step.batch_logits(model, features, 16, torch.device("cpu"), 0, max_tokens=40)]
    assert sizes == [5] * 6
    assert step.eval_token_budget(torch.device("cpu")) == step.CPU_EVAL_TOKENS
    assert step.eval_token_budget(torch.device("cuda")) is None  # a device object: no GPU needed
