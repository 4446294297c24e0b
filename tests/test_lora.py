"""The regularizers on LoRA-adapted encoders (peft), in mt_dnn.train and in RegularizedTrainer.

Expected values come from ``tests.reference_forward``: our own loop over the encoder's blocks in which every
adapted linear layer is computed as W x + b + (alpha / r) * B A x from its weights (``lora_by_formula``), never by
the adapter library's forward. B starts at zero in LoRA (the adapter is then a no-op), so the tests draw it at
random: the adapters change every value checked here.
"""
from __future__ import annotations

import json

import pytest
import torch

from mt_dnn.hf import HFClassifier, RegularizedTrainer
from mt_dnn.perturbation import build_regularizer
from tests import reference_forward as ref
from tests.conftest import ARCHS
from tests.test_hf_trainer import OPTIONS, Rows, batch_for, classifier, hand_head, no_hooks, training_args
from tests.test_methods_independent import _batch, _deep_model, _no_hooks, _rapt_noise

pytest.importorskip("peft")

RANK, ALPHA = 4, 6.0
TOL = 1e-5
# the attention query and value projections of each architecture, as the tests name them
QV = {"bert": ("query", "value"), "roberta": ("query", "value"), "electra": ("query", "value"),
      "deberta-v2": ("query_proj", "value_proj"), "distilbert": ("q_lin", "v_lin")}


def _random_b(model: torch.nn.Module) -> None:
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)


def lora_multitask(arch: str, tasks=("rte",), layers: int = 3):
    """A tiny MultiTaskModel whose encoder carries LoRA adapters (rank 4, alpha 6, no adapter dropout)."""
    from mt_dnn.lora import add_lora

    model = _deep_model(arch, tasks, layers)
    add_lora(model, rank=RANK, alpha=ALPHA, dropout=0.0, targets=None)
    _random_b(model)
    return model.eval()


def lora_classifier(arch: str, num_labels: int = 2):
    """A tiny AutoModelForSequenceClassification wrapped by peft (LoRA on query and value, the head trainable)."""
    from peft import LoraConfig, get_peft_model

    base = classifier(arch, num_labels)
    kind = base.config.model_type
    config = LoraConfig(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(QV[kind]))
    model = get_peft_model(base, config)
    _random_b(model)
    return model.eval()


def ref_multitask(model, batch: dict, **kw) -> torch.Tensor:
    with ref.lora_by_formula(model, ALPHA, RANK) as n:
        assert n == 2 * model.num_layers  # query and value of every block
        return ref.logits(model, batch, **kw)


def ref_classifier(model, batch: dict, **kw) -> torch.Tensor:
    base = model.get_base_model()
    with ref.lora_by_formula(model, ALPHA, RANK) as n:
        assert n == 2 * base.config.num_hidden_layers
        return hand_head(base, ref.last_hidden(base.base_model, batch, **kw))


# ---- the independent forward sees the adapters -------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_adapted_model_matches_the_formula_and_the_adapters_matter(arch):
    model = lora_multitask(arch)
    batch = _batch(arch)
    own = model(batch)
    assert torch.allclose(own, ref_multitask(model, batch), atol=1e-6)
    with ref.lora_by_formula(model, 0.0, RANK):  # the same loop without the B A x term
        assert not torch.allclose(own, ref.logits(model, batch), atol=1e-3)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.encoder.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(QV[model.encoder.config.model_type])


def test_only_the_adapters_and_heads_are_trainable():
    model = lora_multitask("bert", tasks=("rte", "stsb"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("heads.") for n in trainable)
    assert {n for n, _ in model.heads.named_parameters(prefix="heads")} <= trainable
    assert sum("lora_A" in n for n in trainable) == 2 * model.num_layers


# ---- every method against the independent forward -----------------------------------------------------------
# ``model`` is the multi-task model or the classifier's adapter; ``reference(batch, **kw)`` its independent logits

def check_rapt(model, batch: dict, reference, share: bool) -> None:
    """RAPT at each layer 0..L (pinned), against noise drawn again from the same seed and injected by hand."""
    clean_ref = reference(batch)
    top = model.num_layers
    for layer in range(top + 1):
        reg = build_regularizer("rapt", {"eta": 1.5, "max_layer": top, "share_lower_layers": share}, seed=3)
        reg.layer_for_step = lambda step, micro=0, layer=layer: layer
        with reg.clean_pass(model, batch):
            clean = model(batch)
        torch.manual_seed(11)
        loss, logs = reg(model, batch, clean)
        torch.manual_seed(11)
        delta = _rapt_noise(batch["input_ids"].shape + (model.hidden_size,), batch["attention_mask"], 1.5)
        expected = ref.sym_kl_value(clean_ref, reference(batch, inject={layer: lambda h: h + delta}))
        assert abs(loss.item() - expected.item()) < TOL, (layer, loss.item(), expected.item())
        assert expected.item() > 1e-6 and logs["rapt_layer"] == layer


def check_smart(model, batch: dict, reference) -> None:
    """SMART (one ascent step on MT-DNN's inner objective, per-token inf normalisation) written out."""
    torch.manual_seed(21)
    loss, _ = build_regularizer("smart", {"step_size": 1e-3, "noise_var": 1e-5})(model, batch, model(batch))
    torch.manual_seed(21)
    mask = batch["attention_mask"][..., None].float()
    d = (torch.randn(batch["input_ids"].shape + (model.hidden_size,)) * 1e-5 * mask).requires_grad_(True)
    clean = reference(batch)
    (g,) = torch.autograd.grad(ref.mtdnn_inner(clean, reference(batch, inject={0: lambda h: h + d}), False), d)
    moved = d.detach() + 1e-3 * g
    delta = moved / (moved.abs().amax(-1, keepdim=True) + 1e-6) * mask
    expected = ref.sym_kl_value(clean, reference(batch, inject={0: lambda h: h + delta}))
    assert abs(loss.item() - expected.item()) < TOL * max(1.0, expected.item()), (loss.item(), expected.item())
    assert expected.item() > 0


def check_r3f(model, batch: dict, reference) -> None:
    """R3F: uniform noise on a detached token lookup, symmetric KL."""
    torch.manual_seed(13)
    loss, _ = build_regularizer("r3f", {"eps": 0.05, "noise": "uniform"})(model, batch, model(batch))
    torch.manual_seed(13)
    z = torch.empty(batch["input_ids"].shape + (model.hooks.word_embeddings.embedding_dim,)).uniform_(-0.05, 0.05)
    expected = ref.sym_kl_value(reference(batch), reference(batch, word_noise=z))
    assert abs(loss.item() - expected.item()) < TOL and expected.item() > 1e-6, (loss.item(), expected.item())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("share", [False, True], ids=["paper", "shared"])
def test_rapt_on_lora_encoder_each_layer(arch, share):
    model = lora_multitask(arch)
    check_rapt(model, _batch(arch), lambda b, **kw: ref_multitask(model, b, **kw), share)
    assert _no_hooks(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_smart_and_r3f_on_lora_encoder(arch):
    model = lora_multitask(arch, layers=2)
    check_smart(model, _batch(arch, batch=4), lambda b, **kw: ref_multitask(model, b, **kw))
    check_r3f(model, _batch(arch), lambda b, **kw: ref_multitask(model, b, **kw))
    assert _no_hooks(model)


# ---- a peft classifier in RegularizedTrainer's adapter --------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("share", [False, True], ids=["paper", "shared"])
def test_rapt_on_peft_classifier_each_layer(arch, share):
    model = lora_classifier(arch)
    adapter = HFClassifier(model)
    batch = batch_for(arch)
    assert adapter.num_layers == 2 and torch.allclose(adapter(batch), ref_classifier(model, batch), atol=1e-6)
    check_rapt(adapter, batch, lambda b, **kw: ref_classifier(model, b, **kw), share)
    assert no_hooks(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_smart_and_r3f_on_peft_classifier(arch):
    model = lora_classifier(arch)
    adapter = HFClassifier(model)
    check_smart(adapter, batch_for(arch, batch=4), lambda b, **kw: ref_classifier(model, b, **kw))
    check_r3f(adapter, batch_for(arch), lambda b, **kw: ref_classifier(model, b, **kw))
    assert no_hooks(model)


@pytest.mark.parametrize("method", ["rapt", "smart", "r3f"])
def test_trainer_on_peft_classifier_moves_only_adapters_and_head(method, tmp_path):
    model = lora_classifier("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RegularizedTrainer(model=model, args=training_args(tmp_path), method=method,
                                 method_options=OPTIONS[method], train_dataset=Rows(16), seed=1)
    trainer.train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any("lora_A" in n for n in moved) and any("classifier" in n for n in moved)
    assert all("lora_" in n or "modules_to_save" in n for n in moved), sorted(moved)
    logged = [h for h in trainer.state.log_history if "reg_loss" in h]
    assert logged and logged[-1]["reg_loss"] > 0


# ---- standard needs no hooks ------------------------------------------------------------------------------------

def _gpt2_classifier():
    from transformers import AutoModelForSequenceClassification, GPT2Config

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, pad_token_id=0, num_labels=2)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg)


def test_standard_trains_a_classifier_the_hooks_do_not_know(tmp_path):
    from data_utils.task_def import ConfigError

    model = _gpt2_classifier()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RegularizedTrainer(model=model, args=training_args(tmp_path), method="standard",
                                 train_dataset=Rows(16, token_types=False), seed=1)
    trainer.train()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert [h for h in trainer.state.log_history if "task_loss" in h][-1]["reg_loss"] == 0.0
    with pytest.raises(ConfigError, match="unsupported encoder GPT2Model"):
        RegularizedTrainer(model=_gpt2_classifier(), args=training_args(tmp_path), method="rapt",
                           train_dataset=Rows(16, token_types=False))


# ---- mt_dnn.train --lora_rank ------------------------------------------------------------------------------------

def _train_config(tmp_path, glue_dir, model_dir, **kw):
    from mt_dnn.config import TrainConfig

    return TrainConfig(tasks="rte", glue_dir=str(glue_dir), model=str(model_dir), output_dir=str(tmp_path / "run"),
                       cache_dir=str(tmp_path / "cache"), batch_size=8, lr=1e-2, log_every=1, **kw)


def test_train_lora_run_saves_a_plain_model_that_predicts_like_the_trained_one(tmp_path, glue_dir, tiny_model_dir):
    from transformers import AutoModel

    from mt_dnn.model import load_model
    from mt_dnn.trainer import Trainer

    cfg = _train_config(tmp_path, glue_dir, tiny_model_dir, method="rapt", max_steps=3, no_eval=True,
                        lora_rank=4, lora_alpha=8.0, method_options={"max_layer": 2})
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        named = dict(trainer.model.named_parameters())
        assert opt_params == {id(p) for n, p in named.items() if "lora_" in n or n.startswith("heads.")}
        trainer.train()
    finally:
        trainer.close()
    run = tmp_path / "run"
    recipe = json.loads((run / "config.json").read_text())["recipe"]
    assert (recipe["lora_rank"], recipe["lora_alpha"], recipe["lora_target_modules"]) == (4, 8.0, None)
    saved, _, _ = load_model(run)
    assert all("lora" not in k and "base_layer" not in k for k in saved.state_dict())
    trained = trainer.model.eval()
    batch = _batch("bert")
    batch["input_ids"] = batch["input_ids"] % trained.encoder.config.vocab_size
    with torch.no_grad():
        assert torch.allclose(saved.eval()(batch), trained(batch), atol=1e-5)
    # the frozen weights are the encoder's own; the adapted ones carry the merged update (alpha / r) B A
    plain = AutoModel.from_pretrained(tiny_model_dir).state_dict()
    mine = saved.encoder.state_dict()
    assert torch.equal(mine["encoder.layer.0.attention.self.key.weight"], plain["encoder.layer.0.attention.self.key.weight"])
    assert torch.equal(mine["embeddings.word_embeddings.weight"], plain["embeddings.word_embeddings.weight"])
    q = "encoder.layer.0.attention.self.query"
    lora = dict(trained.encoder.named_modules())[f"base_model.model.{q}"]
    update = 2.0 * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
    assert update.abs().max() > 1e-4
    assert torch.allclose(mine[f"{q}.weight"], plain[f"{q}.weight"] + update, atol=1e-6)


def test_train_cli_lora_flags(tmp_path, glue_dir, tiny_model_dir):
    from tests.test_train_cli import _cli

    common = ["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--cache_dir", str(tmp_path / "c"),
              "--tasks", "rte", "--max_steps", "1", "--no_eval"]
    r = _cli(*common, "--output_dir", str(tmp_path / "a"), "--lora_alpha", "32")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--lora_alpha only applies with --lora_rank" in r.stderr.strip().splitlines()[-1]
    r = _cli(*common, "--output_dir", str(tmp_path / "b"), "--lora_rank", "2", "--lora_target_modules", "query,nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "--lora_target_modules: no linear layer named nope" in last and "key" in last
    assert not (tmp_path / "b").exists()
    r = _cli(*common, "--output_dir", str(tmp_path / "c2"), "--lora_rank", "2", "--lora_target_modules", "query,key")
    assert r.returncode == 0, r.stderr
    assert "LoRA rank 2" in r.stderr


def test_lora_run_resumes_bit_identical(tmp_path, glue_dir, tiny_model_dir, monkeypatch):
    """An interrupted LoRA run (stopped right after its first checkpoint) resumes to the uninterrupted run's
    records and best/ weights, bit for bit: the checkpoint keeps the adapters, the optimizer state of the
    trainable parameters only, and the RNG."""
    from mt_dnn.train import main
    from mt_dnn.trainer import Trainer
    from tests.faults import Killed, die_after_checkpoint
    from tests.test_reliability import _args, _assert_same_run

    common = ("--epochs", "2", "--batch_size", "4", "--method", "rapt", "--rapt_max_layer", "2",
              "--save_every_steps", "3", "--lora_rank", "2", "--lora_target_modules", "query,key,value")
    alone = tmp_path / "alone"
    assert main(_args(glue_dir, tiny_model_dir, alone, tmp_path / "c", *common)) == 0

    monkeypatch.setattr(Trainer, "save_checkpoint", die_after_checkpoint(Trainer))
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        main(_args(glue_dir, tiny_model_dir, killed, tmp_path / "c", *common))
    monkeypatch.undo()
    assert torch.load(killed / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == 3
    assert main(_args(glue_dir, tiny_model_dir, killed, tmp_path / "c", *common, "--resume")) == 0
    _assert_same_run(alone, killed, evaluations=2)
    assert "lora_rank" in json.loads((killed / "config.json").read_text())["recipe"]
