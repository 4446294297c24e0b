"""Every regularizer against a value computed without the project's code.

The expected values come from ``tests.reference_forward``: our own loop over the encoder's blocks (it matches
the encoder's own ``hidden_states`` exactly) and the formulas written out by hand. Models are in eval mode
(no dropout) unless a test is about dropout, so the only randomness is the method's noise, which the reference
draws again from the same seed.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mt_dnn import losses
from mt_dnn.perturbation import build_regularizer
from mt_dnn.trainer import TrainStep
from tests import reference_forward as ref
from tests.conftest import ARCHS, tiny_batch, tiny_config, tiny_model

TOL = 1e-5


def _batch(arch: str, **kw) -> dict:
    return tiny_batch(token_types=arch not in ("distilbert", "roberta"), **kw)


def _deep_model(arch: str, tasks=("rte",), layers: int = 3):
    """A tiny model with ``layers`` blocks (so RAPT's layers 0..3 all exist)."""
    from transformers import AutoModel

    import dataclasses

    from data_utils.task_def import load_task_defs
    from mt_dnn.model import MultiTaskModel

    cfg = tiny_config(arch)
    for key in ("num_hidden_layers", "n_layers"):
        if hasattr(cfg, key):
            setattr(cfg, key, layers)
    torch.manual_seed(0)
    defs = load_task_defs()
    return MultiTaskModel(AutoModel.from_config(cfg), [dataclasses.replace(defs[t], dropout=0.0) for t in tasks],
                          "cls").eval()


def _rapt_noise(shape, mask: torch.Tensor, eta: float, per_token: bool = False) -> torch.Tensor:
    """Algorithm 1 lines 4-6, written out: N(0, 1), zero on padding, divided by its inf-norm, times eta."""
    delta = torch.randn(shape) * mask[..., None].float()
    dims = (2,) if per_token else (1, 2)
    return eta * delta / delta.abs().amax(dim=dims, keepdim=True).clamp_min(1e-30)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---- RAPT ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("share", [False, True], ids=["paper", "shared"])
def test_rapt_value_each_layer_matches_own_forward(arch, share):
    model = _deep_model(arch)
    batch = _batch(arch)
    clean_ref = ref.logits(model, batch)
    for layer in range(4):
        reg = build_regularizer("rapt", {"eta": 1.5, "max_layer": 3, "share_lower_layers": share}, seed=3)
        reg.layer_for_step = lambda step, micro=0, layer=layer: layer  # pin r; the draws are tested elsewhere
        with reg.clean_pass(model, batch):
            clean = model(batch)
        torch.manual_seed(11)
        loss, logs = reg(model, batch, clean)
        torch.manual_seed(11)
        delta = _rapt_noise(clean_ref.shape[:1] + batch["input_ids"].shape[1:] + (model.hidden_size,),
                            batch["attention_mask"], 1.5)
        noisy_ref = ref.logits(model, batch, inject={layer: lambda h: h + delta})
        expected = ref.sym_kl_value(clean_ref, noisy_ref)
        assert abs(loss.item() - expected.item()) < TOL, (arch, layer, loss.item(), expected.item())
        assert expected.item() > 1e-6  # the noise did something
        assert logs["rapt_layer"] == layer
    assert _no_hooks(model)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("share", [False, True], ids=["paper", "shared"])
def test_rapt_noise_in_model_has_inf_norm_eta_and_zero_padding(arch, share):
    """Measured where it matters: at the input of the module that reads layer r (block r + 1, and the conv)."""
    model = _deep_model(arch)
    batch = _batch(arch, pad_last=4)
    clean_rec: dict = {}
    ref.last_hidden(model.encoder, batch, record=clean_rec)
    stack = model.hooks.stack
    for layer in range(3):  # layer 3 has no next block
        reg = build_regularizer("rapt", {"eta": 2.0, "max_layer": 3, "share_lower_layers": share})
        reg.layer_for_step = lambda step, micro=0, layer=layer: layer
        seen: list[torch.Tensor] = []
        handle = stack.layer[layer].register_forward_pre_hook(
            lambda m, a, k: seen.append((a[0] if a else next(iter(k.values()))).detach().clone()), with_kwargs=True)
        conv_seen: list[torch.Tensor] = []
        conv = getattr(stack, "conv", None)
        h2 = conv.register_forward_pre_hook(lambda m, a: conv_seen.append(a[0].detach().clone())) if conv else None
        with reg.clean_pass(model, batch):
            clean = model(batch)
        reg(model, batch, clean)
        handle.remove()
        if h2:
            h2.remove()
        noise = seen[-1] - clean_rec[layer]
        peaks = noise.abs().amax(dim=(1, 2))
        assert torch.allclose(peaks, torch.full_like(peaks, 2.0), atol=1e-5), (arch, layer, peaks)
        assert torch.all(noise[0, -4:] == 0)
        if conv is not None and layer == 0 and not share:  # the conv reads the perturbed embeddings
            assert torch.allclose(conv_seen[-1] - clean_rec[0], noise, atol=1e-6)


def test_rapt_alpha_weights_the_term_in_the_step():
    model = _deep_model("bert")
    batch = _batch("bert")
    reg = build_regularizer("rapt", {"alpha": 0.3, "eta": 2.0, "max_layer": 2}, seed=5)
    reg.step, reg.micro = 4, 0
    layer = reg.layer_for_step(4)
    torch.manual_seed(2)
    loss, task_loss, reg_loss, _ = TrainStep(model, reg)(batch)
    clean = ref.logits(model, batch)
    torch.manual_seed(2)
    delta = _rapt_noise(batch["input_ids"].shape + (model.hidden_size,), batch["attention_mask"], 2.0)
    noisy = ref.logits(model, batch, inject={layer: lambda h: h + delta})
    ce = torch.nn.functional.cross_entropy(clean.double(), batch["labels"])
    expected = ce + 0.3 * ref.sym_kl_value(clean, noisy)
    assert abs(loss.item() - expected.item()) < TOL
    assert abs(task_loss.item() - ce.item()) < TOL


def test_rapt_multi_task_uses_the_batch_head_and_its_divergence():
    model = _deep_model("bert", tasks=("rte", "stsb"))
    for task, regression in (("rte", False), ("stsb", True)):
        batch = tiny_batch(task=task, regression=regression)
        reg = build_regularizer("rapt", {"eta": 2.0, "max_layer": 2})
        reg.layer_for_step = lambda step, micro=0: 2
        torch.manual_seed(4)
        loss, _ = reg(model, batch, model(batch))
        clean = ref.logits(model, batch)
        torch.manual_seed(4)
        delta = _rapt_noise(batch["input_ids"].shape + (model.hidden_size,), batch["attention_mask"], 2.0)
        noisy = ref.logits(model, batch, inject={2: lambda h: h + delta})
        assert clean.shape[1] == (1 if regression else 2)
        expected = ref.mse_value(clean, noisy) if regression else ref.sym_kl_value(clean, noisy)
        assert abs(loss.item() - expected.item()) < TOL, task


def test_rapt_layer_drawn_per_micro_batch_from_seed_step_micro():
    reg = build_regularizer("rapt", {"max_layer": 3}, seed=9)
    other = build_regularizer("rapt", {"max_layer": 3}, seed=9)  # another rank
    table = [[reg.layer_for_step(s, k) for k in range(4)] for s in range(200)]
    assert table == [[other.layer_for_step(s, k) for k in range(4)] for s in range(200)]
    # micro-batches of one step do not all share r
    assert sum(len(set(row)) > 1 for row in table) > 100
    assert {x for row in table for x in row} == {1, 2, 3}


def test_rapt_paper_literal_noisy_pass_draws_fresh_dropout_masks():
    model = tiny_model(dropout=0.3).train()
    batch = tiny_batch()
    reg = build_regularizer("rapt", {"eta": 0.0, "max_layer": 2})
    torch.manual_seed(0)
    clean = model(batch)
    loss, _ = reg(model, batch, clean)
    assert loss.item() > 1e-4  # no noise at all, yet the two passes differ: their own dropout masks
    model.eval()
    loss, _ = reg(model, batch, model(batch))
    assert loss.item() == 0.0


# ---- SMART ---------------------------------------------------------------------------------------------------

def _smart_reference(model, batch, d0: torch.Tensor, step_size: float, regression: bool,
                     divergence=ref.sym_kl_value) -> torch.Tensor:
    """One ascent step on MT-DNN's inner objective, per-token inf normalisation, then the final divergence
    (``divergence(clean, noisy)`` for classification)."""
    mask = batch["attention_mask"][..., None].float()
    clean = ref.logits(model, batch)
    d = d0.clone().requires_grad_(True)
    noisy = ref.logits(model, batch, inject={0: lambda h: h + d})
    (g,) = torch.autograd.grad(ref.mtdnn_inner(clean, noisy, regression), d)
    moved = d.detach() + step_size * g
    delta = moved / (moved.abs().amax(-1, keepdim=True) + 1e-6) * mask
    final = ref.logits(model, batch, inject={0: lambda h: h + delta})
    return ref.mse_value(clean, final) if regression else divergence(clean, final)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_smart_value_matches_mtdnn_inner_objective(arch, task):
    regression = task == "stsb"
    model = _deep_model(arch, tasks=(task,), layers=2)
    batch = _batch(arch, task=task, regression=regression, batch=4)
    reg = build_regularizer("smart", {"step_size": 1e-3, "noise_var": 1e-5})
    torch.manual_seed(21)
    loss, logs = reg(model, batch, model(batch))
    torch.manual_seed(21)
    d0 = torch.randn(batch["input_ids"].shape + (model.hidden_size,)) * 1e-5 * batch["attention_mask"][..., None]
    expected = _smart_reference(model, batch, d0, 1e-3, regression)
    assert abs(loss.item() - expected.item()) < TOL * max(1.0, expected.item()), (loss.item(), expected.item())
    assert expected.item() > 0
    assert _no_hooks(model)


def test_smart_ball_projection_and_its_logs_match_the_formula():
    """SMART paper's step: delta = clip(d0 + step_size * g / (||g||_inf + eps), -radius, radius) per token, with g
    the gradient of MT-DNN's inner objective; logged: ||step_size * g|| / ||d0 + step_size * g|| and max |delta|.
    A radius and step large enough for the term (about 7e-3) to be compared to 1e-4 of its size."""
    model = _deep_model("bert", layers=2)
    batch = tiny_batch(batch=4)
    reg = build_regularizer("smart", {"projection": "ball", "radius": 0.05, "step_size": 0.1, "noise_var": 1e-2})
    torch.manual_seed(21)
    loss, logs = reg(model, batch, model(batch))
    torch.manual_seed(21)
    mask = batch["attention_mask"][..., None].float()
    d0 = torch.randn(batch["input_ids"].shape + (model.hidden_size,)) * 1e-2 * mask
    clean = ref.logits(model, batch)
    d = d0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref.mtdnn_inner(clean, ref.logits(model, batch, inject={0: lambda h: h + d}), False), d)
    step = 0.1 * g
    delta = (d0 + 0.1 * g / (g.abs().amax(-1, keepdim=True) + 1e-6)).clamp(-0.05, 0.05) * mask
    assert (delta.abs() == 0.05).any() and ((delta.abs() < 0.05) & (delta != 0)).any()  # clipped and not
    expected = ref.sym_kl_value(clean, ref.logits(model, batch, inject={0: lambda h: h + delta}))
    assert expected.item() > 1e-3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert float(logs["smart_grad_share"]) == pytest.approx((step.norm() / (d0 + step).norm()).item(), rel=1e-5)
    assert float(logs["smart_delta_inf"]) == pytest.approx(delta.abs().max().item(), rel=1e-6)


def test_smart_initial_noise_is_noise_var_times_standard_normal_zero_on_padding():
    model = _deep_model("bert", layers=2)
    batch = tiny_batch(batch=4, length=40, pad_last=6)
    clean_rec: dict = {}
    ref.last_hidden(model.encoder, batch, record=clean_rec)
    first: list[torch.Tensor] = []
    handle = model.hooks.blocks[0].register_forward_pre_hook(lambda m, a: first.append(a[0].detach().clone()))
    reg = build_regularizer("smart", {"noise_var": 1e-3})
    torch.manual_seed(8)
    reg(model, batch, model(batch))
    handle.remove()
    d0 = first[1] - clean_rec[0]  # first[0] is the clean pass
    torch.manual_seed(8)
    expected = torch.randn(d0.shape) * 1e-3 * batch["attention_mask"][..., None]
    assert torch.allclose(d0, expected, atol=1e-6)  # float32 cancellation of h + d0 - h
    assert torch.all(d0[0, -6:] == 0)
    assert 0.9e-3 < d0[1:].std().item() < 1.1e-3


def test_smart_gradient_does_not_depend_on_how_the_batch_is_split(monkeypatch):
    """MT-DNN's objective is a sum over rows: each row's ascent gradient is its own (DDP / accumulation safe)."""
    model = _deep_model("bert", layers=2)
    batch = tiny_batch(batch=4, pad_last=0)
    d0 = torch.randn(batch["input_ids"].shape + (model.hidden_size,)) * 1e-2

    def grads_of(rows):
        part = {k: (v[rows] if torch.is_tensor(v) else v) for k, v in batch.items()}
        reg = build_regularizer("smart", {"noise_var": 1.0})
        seen = {}
        monkeypatch.setattr(torch, "randn", lambda *shape, **kw: d0[rows].clone())
        orig = reg.ascend

        def spy(delta, grad):
            seen["g"] = grad
            return orig(delta, grad)

        reg.ascend = spy
        reg(model, part, model(part))
        monkeypatch.undo()
        return seen["g"]

    whole = grads_of(slice(0, 4))
    assert whole.abs().max() > 0
    # float error floor: other batch shapes sum in another order (entries near zero have no relative precision);
    # a gradient that depended on the batch would differ by a factor of the batch size, far above it
    floor = 1e-4 * float(whole.abs().max())
    halves = torch.cat([grads_of(slice(0, 2)), grads_of(slice(2, 4))])
    assert torch.allclose(whole, halves, rtol=1e-4, atol=floor)
    single = grads_of(slice(1, 2))
    assert torch.allclose(whole[1:2], single, rtol=1e-4, atol=floor)


def test_smart_non_finite_skip_leaves_no_hook(monkeypatch):
    model = _deep_model("bert", layers=2)
    batch = tiny_batch()
    monkeypatch.setattr(losses, "adversarial_objective", lambda kind, c, n: (n * float("nan")).sum())
    loss, logs = build_regularizer("smart")(model, batch, model(batch))
    assert loss.item() == 0.0 and logs["smart_skipped"] == 1.0
    assert _no_hooks(model)


# ---- R3F -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("noise", ["uniform", "normal"])
def test_r3f_value_and_noise_on_a_detached_token_lookup(arch, noise):
    model = _deep_model(arch, layers=2)
    batch = _batch(arch)
    reg = build_regularizer("r3f", {"eps": 0.05, "noise": noise, "lambda_": 1.0})
    clean = model(batch)
    torch.manual_seed(13)
    loss, _ = reg(model, batch, clean)
    width = model.hooks.word_embeddings.embedding_dim
    torch.manual_seed(13)
    shape = batch["input_ids"].shape + (width,)
    z = torch.empty(shape).uniform_(-0.05, 0.05) if noise == "uniform" else torch.randn(shape) * 0.05
    clean_ref = ref.logits(model, batch)
    noisy_ref = ref.logits(model, batch, word_noise=z)
    expected = ref.sym_kl_value(clean_ref, noisy_ref)
    assert abs(loss.item() - expected.item()) < TOL and expected.item() > 1e-6
    # the noisy pass sends no gradient into the embedding table through the lookup
    model.zero_grad()
    torch.manual_seed(13)
    reg(model, batch, clean.detach())[0].backward()
    assert model.hooks.word_embeddings.weight.grad is None or model.hooks.word_embeddings.weight.grad.abs().max() == 0
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.encoder.parameters())


def test_r3f_gradient_flows_through_both_arguments_of_both_terms():
    a = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(5, 3, requires_grad=True)
    losses.sym_kl_both(a, b).backward()
    a2, b2 = a.detach().clone().double().requires_grad_(), b.detach().clone().double().requires_grad_()
    ref.sym_kl_value(a2, b2).backward()
    assert torch.allclose(a.grad.double(), a2.grad, atol=1e-6)
    assert torch.allclose(b.grad.double(), b2.grad, atol=1e-6)
    # MT-DNN's stop-gradient form gives a different gradient on the clean side
    a3 = a.detach().clone().requires_grad_()
    losses.sym_kl(a3, b.detach()).backward()
    assert not torch.allclose(a3.grad, a.grad, atol=1e-4)


def test_r3f_has_no_term_for_regression():
    model = _deep_model("bert", tasks=("stsb",), layers=2)
    batch = tiny_batch(task="stsb", regression=True)
    calls = []
    handle = model.hooks.word_embeddings.register_forward_hook(lambda *a: calls.append(1))
    loss, _ = build_regularizer("r3f", {"eps": 0.1})(model, batch, model(batch))
    handle.remove()
    assert loss.item() == 0.0 and len(calls) == 1  # the clean pass only


# ---- hooks never outlive an error ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rapt", "smart", "r3f"])
@pytest.mark.parametrize("arch", ["bert", "deberta-v2-conv"])
def test_no_hook_left_behind_after_an_exception(method, arch, monkeypatch):
    model = _deep_model(arch, layers=2)
    batch = _batch(arch)
    clean = model(batch)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(losses, "divergence", boom)
    monkeypatch.setattr(losses, "sym_kl_both", boom)
    for share in ((False, True) if method == "rapt" else (False,)):
        reg = build_regularizer(method, {"share_lower_layers": share, "max_layer": 2} if method == "rapt" else {})
        with pytest.raises(RuntimeError, match="boom"):
            with reg.clean_pass(model, batch):
                clean = model(batch)
            reg(model, batch, clean)
        assert _no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with model.perturb(1, boom):
            model(batch)
    assert _no_hooks(model)
