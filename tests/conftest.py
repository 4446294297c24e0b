"""Shared fixtures: tiny random encoders (2 layers, hidden 32) and batches; never any download."""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import configuration as hypothesis_configuration
from hypothesis import settings as hypothesis_settings

os.environ.setdefault("MT_DNN_NO_TQDM", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("bert", "roberta", "electra", "deberta-v2", "deberta-v2-conv", "distilbert")


@pytest.fixture(autouse=True)
def _fresh_logging(monkeypatch):
    """Each test starts without the console and file handlers that an earlier test's ``setup_logging`` left on the
    root logger (one writing to a closed capture stream, or to another test's train.log), and without
    ``ROBUSTNESS_DIR`` from the caller's shell (every dev evaluation would also score those sets)."""
    monkeypatch.delenv("ROBUSTNESS_DIR", raising=False)
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) in (logging.StreamHandler, logging.FileHandler):  # pytest's own capture handlers stay
            root.removeHandler(handler)
            handler.close()


def real_glue_dir() -> Path | None:
    """GLUE_DIR (default ../shared/glue_data beside the repository) when it holds the real files."""
    path = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "glue_data")).resolve()  # a test may chdir
    return path if (path / "RTE" / "train.tsv").is_file() else None


def tiny_config(arch: str = "bert", dropout: float = 0.0, vocab_size: int = 100):
    """A 2-layer, 32-wide config of the given architecture."""
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, RobertaConfig

    common = dict(vocab_size=vocab_size, max_position_embeddings=64)
    if arch == "distilbert":
        return DistilBertConfig(n_layers=2, dim=32, n_heads=2, hidden_dim=64, dropout=dropout,
                                attention_dropout=dropout, **common)
    kw = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
              hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **common)
    if arch == "bert":
        return BertConfig(**kw)
    if arch == "roberta":
        return RobertaConfig(pad_token_id=1, type_vocab_size=1, **kw)
    if arch == "electra":
        return ElectraConfig(embedding_size=16, **kw)  # exercises the embedding projection
    if arch in ("deberta-v2", "deberta-v2-conv"):  # -conv: the convolution after block 1 (deberta-v2-xlarge)
        conv = dict(conv_kernel_size=3, conv_act="gelu") if arch.endswith("-conv") else {}
        return DebertaV2Config(relative_attention=True, position_buckets=8, max_relative_positions=16,
                               pos_att_type=["p2c", "c2p"], **conv, **kw)
    raise ValueError(arch)


def tiny_model(tasks=("rte",), arch: str = "bert", dropout: float = 0.0, pooling: str = "cls", seed: int = 0):
    """A MultiTaskModel over a tiny random encoder; task heads use ``dropout`` too."""
    from transformers import AutoModel

    from data_utils.task_def import load_task_defs
    from mt_dnn.model import MultiTaskModel

    torch.manual_seed(seed)
    defs = load_task_defs()
    chosen = [dataclasses.replace(defs[t], dropout=dropout) for t in tasks]
    return MultiTaskModel(AutoModel.from_config(tiny_config(arch, dropout)), chosen, pooling)


def tiny_batch(task: str = "rte", batch: int = 3, length: int = 10, pad_last: int = 3, seed: int = 0,
               regression: bool = False, token_types: bool = True) -> dict:
    """Random ids with the last ``pad_last`` positions of row 0 padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad_last:
        mask[0, -pad_last:] = 0
        ids[0, -pad_last:] = 0
    out = {"task": task, "input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = torch.zeros_like(ids)
    out["labels"] = torch.rand(batch, generator=g) * 5 if regression else torch.randint(0, 2, (batch,), generator=g)
    return out


@pytest.fixture(scope="module")
def tasks():
    """The task definitions of data_utils/glue_tasks.yml (one copy per test module)."""
    from data_utils.task_def import load_task_defs

    return load_task_defs()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A folder holding only the tiny WordPiece fast tokenizer over the fixture words (one per test module)."""
    from tests.glue_fixtures import write_tiny_tokenizer

    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def glue_dir(tmp_path):
    """Small GLUE-format files for rte, mrpc, stsb, cola, sst and wnli, written by the test."""
    from tests.glue_fixtures import write_glue

    return write_glue(tmp_path / "glue")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random BERT (2 layers, hidden 32) with a WordPiece fast tokenizer over the fixture words."""
    from transformers import BertConfig, BertModel

    from tests.glue_fixtures import write_tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny_bert")
    tok = write_tiny_tokenizer(d)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(d)
    return d



# property-based tests (hypothesis, tests/test_properties.py): the same examples on every run, so that a failure
# reproduces, and no example database or failure patch written into the checkout
hypothesis_configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mt-dnn-hypothesis")
hypothesis_settings.register_profile("project", derandomize=True, database=None, deadline=None, max_examples=150)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "project"))
