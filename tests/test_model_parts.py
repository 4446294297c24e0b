"""mt_dnn.model piece by piece, against values worked out here: the default-model and pooling choices, dropout
written into every architecture's config, the pooling formulas on hand-made tensors, which inputs reach the
encoder, the shared AX head, and the saved model folder (its model.json written out by hand, a round trip, and
the one-line errors of a damaged folder)."""
from __future__ import annotations

import json
import re

import pytest
import torch

import mt_dnn.model as model_mod
from data_utils.task_def import ConfigError, load_task_defs
from mt_dnn.model import (
    DEFAULT_MODEL, MultiTaskModel, checkpoint_pooling, load_encoder, load_model, resolve_model, save_model)
from tests.conftest import tiny_batch, tiny_config, tiny_model


@pytest.fixture(scope="module")
def defs():
    return load_task_defs()


# ---- choosing the encoder and its pooling -----------------------------------------------------------------------

def test_resolve_model(monkeypatch):
    monkeypatch.setattr(model_mod, "default_model_path", lambda: "/packaged/minilm")
    for name in (None, "", DEFAULT_MODEL):
        assert resolve_model(name) == "/packaged/minilm"
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("/my/model") == "/my/model"


@pytest.mark.parametrize("config,expected", [
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
    ({"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}, "cls"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "mean"),  # mean is looked at first
    ({"pooling_mode_max_tokens": True}, "cls"),  # a pooling we do not have: the first token
    (None, "cls"),  # no sentence-transformers pooling file
])
def test_checkpoint_pooling(tmp_path, config, expected):
    # expected: the rule of checkpoint_pooling's docstring (1_Pooling/config.json of a sentence-transformers folder)
    if config is not None:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert checkpoint_pooling(str(tmp_path)) == expected


def _save_encoder(path, arch):
    """A tiny random encoder of ``arch`` with the fixture WordPiece tokenizer, saved to ``path``."""
    from transformers import AutoModel, AutoTokenizer

    from tests.glue_fixtures import write_tiny_tokenizer

    write_tiny_tokenizer(path)
    vocab = len(AutoTokenizer.from_pretrained(str(path)))
    AutoModel.from_config(tiny_config(arch, dropout=0.1, vocab_size=vocab)).save_pretrained(path)
    return path


@pytest.mark.parametrize("arch,keys", [("bert", ("hidden_dropout_prob", "attention_probs_dropout_prob")),
                                       ("distilbert", ("dropout", "attention_dropout"))])
def test_load_encoder_sets_the_dropout_of_every_kind(tmp_path, arch, keys):
    folder = _save_encoder(tmp_path / arch, arch)
    encoder, tokenizer = load_encoder(str(folder), dropout=0.35)
    assert tokenizer.is_fast
    for key in keys:
        assert getattr(encoder.config, key) == 0.35, key
    # the modules were built from that config: every plain dropout layer drops with p = 0.35
    ps = {m.p for m in encoder.modules() if isinstance(m, torch.nn.Dropout)}
    assert ps == {0.35}
    kept, _ = load_encoder(str(folder))  # no dropout given: the saved config's 0.1
    assert {m.p for m in kept.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}


@pytest.mark.parametrize("text,first", [("no config.json here\nsecond line", "no config.json here"),
                                        ("", "OSError"), ("  \n ", "OSError")])
def test_load_encoder_error_is_one_line(monkeypatch, text, first):
    import transformers

    class Refusing:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise OSError(text)

    monkeypatch.setattr(transformers, "AutoConfig", Refusing)
    with pytest.raises(ConfigError) as err:
        load_encoder("some/model")
    assert str(err.value) == f"cannot load encoder 'some/model': {first}"


@pytest.mark.parametrize("model", ["/no/such/encoder", "./no-such-encoder", "../no-such-encoder"])
def test_a_missing_local_path_is_named_as_one(model):
    """A path that does not exist is not a hub repo id: say so, not what the hub says of the name."""
    with pytest.raises(ConfigError) as err:
        load_encoder(model)
    assert str(err.value) == f"cannot load encoder {model!r}: no such folder"


# ---- the model ----------------------------------------------------------------------------------------------------

def test_pooling_by_hand():
    model = tiny_model(pooling="mean")
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]],
                           [[5.0, 7.0], [9.0, 9.0], [2.0, 4.0]],
                           [[3.0, -1.0], [50.0, 50.0], [60.0, 60.0]],
                           [[8.0, 8.0], [8.0, 8.0], [8.0, 8.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # mean over the real tokens: row 0 (1+3)/2, (2+6)/2; row 1 (5+9+2)/3, (7+9+4)/3; row 2 its one token;
    # row 3 has none: 0/1
    expected = torch.tensor([[2.0, 4.0], [16 / 3, 20 / 3], [3.0, -1.0], [0.0, 0.0]])
    assert torch.allclose(model.pool(hidden, mask), expected)
    model.pooling = "cls"
    assert torch.equal(model.pool(hidden, mask), hidden[:, 0])


def test_bad_pooling_is_refused():
    with pytest.raises(ConfigError) as err:
        tiny_model(pooling="auto")
    assert str(err.value) == "pooling is 'auto'; choose cls or mean"


def test_shared_heads_sizes_and_losses(defs):
    model = tiny_model(tasks=("mnli", "ax", "stsb"))
    assert sorted(model.heads) == ["mnli", "stsb"]  # AX predicts with MNLI's head: no head of its own
    assert model.num_layers == 2 and model.hidden_size == 32
    assert model.reg_loss_kind({"task": "ax"}) == "sym_kl" and model.reg_loss_kind({"task": "stsb"}) == "mse"
    assert model.encoder.pooler is None  # the encoder's own pooler is dropped: our heads pool
    model.eval()
    batch = tiny_batch("mnli")
    with torch.no_grad():
        mnli = model(batch)
        ax = model({**batch, "task": "ax"})
        stsb = model({**batch, "task": "stsb"})
        # by hand: the head of the task on the first token of the last layer
        hidden = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               token_type_ids=batch["token_type_ids"]).last_hidden_state
        by_hand = model.heads["mnli"](hidden[:, 0])
    assert mnli.shape == (3, 3) and stsb.shape == (3, 1)
    assert torch.equal(ax, mnli) and torch.allclose(mnli, by_hand, atol=1e-6)


def test_encoder_inputs_are_those_the_encoder_takes():
    batch = tiny_batch("rte")
    bert = tiny_model(arch="bert")
    assert sorted(bert.encoder_inputs(batch)) == ["attention_mask", "input_ids", "token_type_ids"]
    assert all(bert.encoder_inputs(batch)[k] is batch[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    no_types = {k: v for k, v in batch.items() if k != "token_type_ids"}
    assert sorted(bert.encoder_inputs(no_types)) == ["attention_mask", "input_ids"]
    distil = tiny_model(arch="distilbert")  # DistilBERT has no token types: they are not passed
    assert sorted(distil.encoder_inputs(batch)) == ["attention_mask", "input_ids"]


def test_token_types_reach_the_encoder():
    model = tiny_model().eval()
    batch = tiny_batch("rte", pad_last=0)
    other = {**batch, "token_type_ids": torch.ones_like(batch["token_type_ids"])}
    with torch.no_grad():
        assert not torch.allclose(model(batch), model(other))


def test_logits_from_a_capture_with_mean_pooling():
    # re-running the blocks above layer 1 on the captured state gives the clean logits, padding masked out of
    # the mean (expected: the plain forward pass)
    model = tiny_model(tasks=("rte",), pooling="mean").eval()
    batch = tiny_batch("rte", pad_last=4)
    with torch.no_grad():
        with model.capture(1) as cap:
            clean = model(batch)
        again = model.logits_from(cap, cap.hidden, batch)
        padded_pad = {**batch, "input_ids": batch["input_ids"].clone()}
        padded_pad["input_ids"][0, -4:] = 7  # other ids under the mask: the mean must not see them
        with model.capture(1) as cap2:
            model(padded_pad)
        other = model.logits_from(cap2, cap2.hidden, padded_pad)
    assert torch.allclose(again, clean, atol=1e-6)
    assert torch.allclose(other[0], clean[0], atol=1e-5)


# ---- saving and loading ---------------------------------------------------------------------------------------------

@pytest.fixture()
def saved(tmp_path, tiny_model_dir, defs):
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(3)
    tasks = [defs["rte"], defs["stsb"], defs["mnli"], defs["ax"]]
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), tasks, "mean").eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    save_model(model, tok, tasks, tmp_path / "best", extra={"step": 7, "note": "x"})
    return model, tmp_path / "best"


def test_saved_folder_and_model_json(saved):
    _, out = saved
    assert sorted(p.name for p in out.iterdir()) == ["encoder", "model.json", "model.safetensors", "tasks.yml"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["best"]  # no temporary folder left behind
    assert (out / "encoder" / "config.json").is_file() and (out / "encoder" / "tokenizer_config.json").is_file()
    # written out by hand from save_model's docstring: pooling, the tasks in order, the heads sorted, each
    # task's labels (None for regression), then the extra keys
    assert json.loads((out / "model.json").read_text()) == {
        "pooling": "mean", "tasks": ["rte", "stsb", "mnli", "ax"], "heads": ["mnli", "rte", "stsb"],
        "labels": {"rte": ["entailment", "not_entailment"], "stsb": None,
                   "mnli": ["contradiction", "entailment", "neutral"],
                   "ax": ["contradiction", "entailment", "neutral"]},
        "step": 7, "note": "x"}


def test_save_then_load_gives_the_same_model(saved):
    model, out = saved
    loaded, tokenizer, tasks = load_model(out)
    assert [t.name for t in tasks] == ["rte", "stsb", "mnli", "ax"] and loaded.pooling == "mean"
    assert tokenizer.is_fast
    a, b = model.state_dict(), loaded.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    batch = tiny_batch("stsb", length=8)
    batch["input_ids"] = batch["input_ids"] % 60
    with torch.no_grad():
        assert torch.equal(loaded.eval()(batch), model(batch))


def test_save_model_replaces_an_older_folder(saved, tiny_model_dir, defs):
    from transformers import AutoModel, AutoTokenizer

    _, out = saved
    tasks = [defs["cola"]]
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), tasks, "cls")
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tasks, out)
    meta = json.loads((out / "model.json").read_text())
    assert meta == {"pooling": "cls", "tasks": ["cola"], "heads": ["cola"], "labels": {"cola": ["0", "1"]}}


def _rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


def test_weights_that_do_not_match_are_one_line_errors(saved):
    _, out = saved
    path = out / "model.safetensors"
    original = path.read_bytes()

    # the heads of rte and stsb missing: four keys, of which the message names the first three (model order)
    _rewrite_weights(out, lambda s: [s.pop(f"heads.{t}.out.{w}") for t in ("rte", "stsb")
                                     for w in ("weight", "bias")])
    with pytest.raises(ConfigError) as err:
        load_model(out)
    assert str(err.value) == (f"{out}: weights do not match the model (missing ['heads.rte.out.weight', "
                              "'heads.rte.out.bias', 'heads.stsb.out.weight'], unexpected [])")

    path.write_bytes(original)
    _rewrite_weights(out, lambda s: s.__setitem__("extra.weight", torch.zeros(2)))
    with pytest.raises(ConfigError) as err:
        load_model(out)
    assert str(err.value) == f"{out}: weights do not match the model (missing [], unexpected ['extra.weight'])"

    path.write_bytes(original)
    _rewrite_weights(out, lambda s: s.update({f"extra.w{i}": torch.zeros(1) for i in range(5)}))
    with pytest.raises(ConfigError) as err:
        load_model(out)
    prefix = f"{out}: weights do not match the model (missing [], unexpected ["
    assert str(err.value).startswith(prefix) and str(err.value).endswith("])")
    named = re.findall(r"'(extra\.w\d)'", str(err.value))
    assert len(named) == 3 and len(set(named)) == 3  # three of the five named

    # two tensors of another shape: torch reports each on a line of its own; the message keeps the last line,
    # cut to 200 characters (a 20-dimensional shape makes the line longer than that)
    path.write_bytes(original)
    long_shape = torch.zeros([1] * 20)
    _rewrite_weights(out, lambda s: s.update({"encoder.embeddings.word_embeddings.weight": torch.zeros(5, 32),
                                              "heads.mnli.out.weight": long_shape}))
    with pytest.raises(ConfigError) as err:
        load_model(out)
    message = str(err.value)
    head = f"{path}: weights do not fit the model ("
    assert message.startswith(head) and message.endswith(")") and "\n" not in message
    inner = message[len(head):-1]
    ones = ", ".join(["1"] * 20)
    expected_line = (f"size mismatch for heads.mnli.out.weight: copying a param with shape torch.Size([{ones}]) "
                     "from checkpoint, the shape in current model is torch.Size([3, 32]).")
    assert len(expected_line) > 200 and inner == expected_line[:200]


def test_a_stale_temporary_folder_of_this_process_is_cleared(tmp_path, tiny_model_dir, defs):
    # a folder left by an earlier save of this same process (killed half-way) must not leak into the new one
    import os

    from transformers import AutoModel, AutoTokenizer

    stale = tmp_path / f"best.tmp-{os.getpid()}"
    (stale / "encoder").mkdir(parents=True)
    (stale / "leftover.bin").write_text("old")
    (stale / "encoder" / "old.txt").write_text("old")
    tasks = [defs["rte"]]
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), tasks, "cls")
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tasks, tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["encoder", "model.json", "model.safetensors",
                                                                     "tasks.yml"]
    assert not (tmp_path / "best" / "encoder" / "old.txt").exists()


def test_load_encoder_refuses_a_slow_or_foreign_tokenizer(tmp_path, monkeypatch):
    from transformers import AutoModel

    from tests.glue_fixtures import write_tiny_tokenizer

    # an encoder whose embedding table (30 rows) is smaller than the fixture tokenizer (66 entries)
    folder = tmp_path / "small"
    write_tiny_tokenizer(folder)
    AutoModel.from_config(tiny_config("bert", vocab_size=30)).save_pretrained(folder)
    with pytest.raises(ConfigError) as err:
        load_encoder(str(folder))
    assert str(err.value) == (f"encoder {folder}: the tokenizer has 66 entries but the encoder's embedding table "
                              "has vocab_size 30 rows (ids from 30 up have no embedding); use the encoder's own "
                              "tokenizer files")

    import transformers

    class NotFast:  # a tokenizer object that does not say it is a fast one
        pass

    folder = _save_encoder(tmp_path / "bert", "bert")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(lambda *a, **k: NotFast()))
    with pytest.raises(ConfigError) as err:
        load_encoder(str(folder))
    assert str(err.value) == f"encoder {str(folder)!r} has no fast tokenizer"
