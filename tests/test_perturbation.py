"""The mathematics of the regularizers, on tiny random encoders with dropout off where it matters."""
from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F

from data_utils.task_def import ConfigError
from mt_dnn import losses
from mt_dnn.perturbation import REGISTRY, Regularizer, build_regularizer, method_names, option_flags, register
from mt_dnn.trainer import TrainStep
from tests import reference_forward as ref
from tests.conftest import ARCHS, tiny_batch, tiny_model
from tests.test_methods_independent import _rapt_noise, _smart_reference


# ---- symmetric KL -------------------------------------------------------------------------------------------

def test_sym_kl_zero_on_equal_and_symmetric():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert losses.sym_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.sym_kl(a, b).item() == pytest.approx(losses.sym_kl(b, a).item(), rel=1e-6)
    assert losses.sym_kl(a, b).item() > 0


def test_sym_kl_value_and_gradient_match_mtdnn_form():
    a = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(5, 3, requires_grad=True)
    loss = losses.sym_kl(a, b)
    pa, pb = F.softmax(a, -1), F.softmax(b, -1)
    expected = ((pa * (pa.log() - pb.log())).sum() + (pb * (pb.log() - pa.log())).sum()) / 5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    # d/da: only KL(sg(p_b) || p_a) depends on a through its second argument -> (p_a - p_b) / B
    assert torch.allclose(a.grad, (pa - pb).detach() / 5, atol=1e-6)
    assert torch.allclose(b.grad, (pb - pa).detach() / 5, atol=1e-6)


def test_sym_kl_is_fp32_for_half_inputs():
    a, b = torch.randn(2, 3).to(torch.bfloat16), torch.randn(2, 3).to(torch.bfloat16)
    assert losses.sym_kl(a, b).dtype == torch.float32


# ---- registry ------------------------------------------------------------------------------------------------

def test_registry_lists_methods_and_rejects_duplicates():
    assert {"standard", "smart", "rapt", "r3f"} <= set(REGISTRY)
    assert method_names() == list(REGISTRY) and method_names()[:4] == ["standard", "rapt", "smart", "r3f"]
    with pytest.raises(ValueError, match="method name 'rapt' is empty or already registered"):
        @register
        class Again(Regularizer):
            name = "rapt"
    with pytest.raises(ValueError, match="method name '' is empty"):
        register(type("Nameless", (Regularizer,), {}))
    with pytest.raises(TypeError, match="is not a Regularizer subclass"):
        register(int)
    fresh = type("Fresh", (Regularizer,), {"name": "fresh_test_method"})
    try:
        assert register(fresh) is fresh and REGISTRY["fresh_test_method"] is fresh
        assert "fresh_test_method" in method_names()
    finally:
        REGISTRY.pop("fresh_test_method", None)
    with pytest.raises(ConfigError, match="choose one of"):
        build_regularizer("nope")
    with pytest.raises(ConfigError, match="has no option"):
        build_regularizer("rapt", {"k": 1})
    with pytest.raises(ConfigError, match="choose one of"):
        build_regularizer("smart", {"norm": "l3"})


def test_method_options_their_flags_and_messages():
    assert {f.option for f in option_flags("rapt")} >= {"--rapt_eta", "--rapt_max_layer", "--rapt_alpha"}
    assert "--r3f_lambda" in {f.option for f in option_flags("r3f")}
    with pytest.raises(ConfigError) as err:
        build_regularizer("rapt", {"k": 1, "z": 2})
    assert str(err.value) == ("method rapt has no option(s) k, z; its options: alpha, eta, max_layer, norm, "
                              "share_lower_layers")
    with pytest.raises(ConfigError) as err:
        build_regularizer("standard", {"eta": 1})
    assert str(err.value) == "method standard has no option(s) eta; its options: none"
    with pytest.raises(ConfigError) as err:
        build_regularizer("nope")
    assert str(err.value).startswith("unknown method 'nope'; choose one of standard, rapt, smart, r3f")
    reg = build_regularizer("rapt")
    assert (reg.step, reg.micro, reg.seed) == (0, 0, 0)  # the first optimizer step and micro-batch are 0


# ---- RAPT ----------------------------------------------------------------------------------------------------

def test_rapt_eta_zero_gives_exactly_zero():
    model = tiny_model(dropout=0.0)
    batch = tiny_batch()
    for share in (False, True):
        reg = build_regularizer("rapt", {"eta": 0.0, "share_lower_layers": share, "max_layer": 2})
        for step in range(4):
            reg.step = step
            with reg.clean_pass(model, batch):
                clean = model(batch)
            loss, _ = reg(model, batch, clean)
            assert loss.item() == 0.0


@pytest.mark.parametrize("norm", ["example", "token"])
def test_rapt_noise_scale_and_padding(norm):
    reg = build_regularizer("rapt", {"eta": 2.0, "norm": norm})
    h = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    delta = reg.noise(h, mask)
    assert torch.all(delta[0, 4:] == 0)
    if norm == "example":
        peaks = delta.abs().amax(dim=(1, 2))
        assert torch.allclose(peaks, torch.full((3,), 2.0))
    else:
        peaks = delta.abs().amax(dim=-1)
        assert torch.allclose(peaks[mask.bool()], torch.full((int(mask.sum()),), 2.0))


def _layer_outputs(model, batch):
    """Output of layer 0 (input of block 1) and of every block, in one pass."""
    outs = {}
    handles = [model.hooks.blocks[0].register_forward_pre_hook(
        lambda m, a, k: outs.__setitem__(0, (a[0] if a else k["hidden_states"]).detach().clone()), with_kwargs=True)]
    for i, block in enumerate(model.hooks.blocks):
        handles.append(block.register_forward_hook(
            lambda m, a, o, i=i: outs.__setitem__(i + 1, (o[0] if isinstance(o, tuple) else o).detach().clone())))
    model(batch)
    for h in handles:
        h.remove()
    return outs


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_only_the_chosen_layer_changes(layer):
    model = tiny_model(dropout=0.0).eval()
    batch = tiny_batch()
    clean = _layer_outputs(model, batch)
    added = {}

    def add(h):
        added["delta"] = torch.full_like(h, 0.5)
        return h + added["delta"]

    with model.perturb(layer, add):
        noisy = _layer_outputs(model, batch)
    for i in range(layer):
        assert torch.equal(clean[i], noisy[i]), f"layer {i} below {layer} changed"
    if layer < 2:  # hooks see the post-noise state of the chosen layer only as the next block's input
        assert not torch.allclose(clean[layer + 1], noisy[layer + 1])
    # the chosen layer's output itself carries exactly the noise
    seen = {}
    with model.capture(layer) as cap:
        model(batch)
    seen["h"] = cap.hidden
    assert torch.allclose(seen["h"], clean[layer])


def test_rapt_layer_draws_uniform_and_rank_independent():
    a = build_regularizer("rapt", {"max_layer": 3}, seed=7)
    b = build_regularizer("rapt", {"max_layer": 3}, seed=7)  # "another rank": same seed, fresh object
    draws = [a.layer_for_step(s) for s in range(3000)]
    assert draws == [b.layer_for_step(s) for s in range(3000)]
    counts = collections.Counter(draws)
    assert set(counts) == {1, 2, 3}
    for r in (1, 2, 3):
        assert abs(counts[r] / 3000 - 1 / 3) < 0.04
    assert build_regularizer("rapt", {"max_layer": 0}).layer_for_step(5) == 0
    assert [build_regularizer("rapt", {"max_layer": 3}, seed=8).layer_for_step(s) for s in range(50)] != draws[:50]


def test_rapt_max_layer_above_depth_is_an_error():
    model = tiny_model()
    with pytest.raises(ConfigError, match="outside 0..2"):
        build_regularizer("rapt", {"max_layer": 3}).check(model)
    for ok in (0, 1, 2):  # the embedding output (0) up to the encoder's last layer are all valid
        build_regularizer("rapt", {"max_layer": ok}).check(model)


def test_rapt_layer_draws_snapshot_and_micro_default():
    """Snapshot: seed 7's draws of r in 1..2 for steps 0-2 and micro-batches 0-1, recorded from the code when this
    test was written (tests/test_hf_trainer.py sees the same table from inside the Trainer); a resumed or re-run
    campaign relies on them staying the same. Without a micro-batch index the draw is micro-batch 0's."""
    reg = build_regularizer("rapt", {"max_layer": 2}, seed=7)
    assert [[reg.layer_for_step(s, k) for k in range(2)] for s in range(3)] == [[2, 2], [1, 2], [1, 1]]
    assert all(reg.layer_for_step(s) == reg.layer_for_step(s, 0) for s in range(20))


def _sym_kl_stop_gradient(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MT-DNN's symmetric KL written out: KL(sg(p_a) || p_b) + KL(sg(p_b) || p_a), rows averaged, in float64."""
    la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    return (ref.kl_rows(la.detach(), lb) + ref.kl_rows(lb.detach(), la)).mean()


def _rapt_expected(model, batch, layer: int, eta: float, seed: int) -> torch.Tensor:
    """RAPT's term written out on the independent forward: N(0, 1) noise (torch seed ``seed``), zero on padding,
    scaled to inf-norm ``eta`` per example, added to layer ``layer``; MT-DNN's sym KL or the MSE (regression)."""
    torch.manual_seed(seed)
    delta = _rapt_noise(batch["input_ids"].shape + (model.hidden_size,), batch["attention_mask"], eta)
    clean = ref.logits(model, batch)
    noisy = ref.logits(model, batch, inject={layer: lambda h: h + delta})
    if model.task_defs[batch["task"]].type == "regression":
        return ref.mse_value(clean, noisy)
    return _sym_kl_stop_gradient(clean, noisy)


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_lower_layers_and_paper_literal_both_equal_the_independent_value(arch):
    """Both paths, at the layers the draws give over six steps, against the value written out on the reference
    forward (without dropout the two paths compute the same number)."""
    model = tiny_model(arch=arch, dropout=0.0)
    batch = tiny_batch(token_types=arch not in ("distilbert", "roberta"))
    layers = set()
    for step in range(6):
        lit = build_regularizer("rapt", {"max_layer": 2}, seed=3)
        sha = build_regularizer("rapt", {"max_layer": 2, "share_lower_layers": True}, seed=3)
        lit.step = sha.step = step
        clean = model(batch)
        torch.manual_seed(100 + step)
        loss_lit, logs_lit = lit(model, batch, clean)
        with sha.clean_pass(model, batch):
            clean2 = model(batch)
        torch.manual_seed(100 + step)
        loss_sha, logs_sha = sha(model, batch, clean2)
        layer = int(logs_lit["rapt_layer"])
        assert logs_sha["rapt_layer"] == layer and layer in (1, 2)
        layers.add(layer)
        expected = _rapt_expected(model, batch, layer, 2.0, 100 + step).item()
        assert expected > 1e-6
        assert loss_lit.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert loss_sha.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert layers == {1, 2}


def test_rapt_gradients_reach_encoder_and_regression_uses_mse():
    model = tiny_model(tasks=("stsb",), dropout=0.0)
    batch = tiny_batch("stsb", regression=True)
    reg = build_regularizer("rapt", {"max_layer": 1})
    reg.step = 0
    clean = model(batch)
    torch.manual_seed(0)
    loss, _ = reg(model, batch, clean)
    expected = _rapt_expected(model, batch, 1, 2.0, 0)  # mean squared difference of the (B, 1) outputs
    assert expected.item() > 1e-6
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = [p.grad for n, p in model.encoder.named_parameters() if "layer.0." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


# ---- SMART ---------------------------------------------------------------------------------------------------

def test_smart_normalise_by_hand():
    # one token (3e-6, -4e-6): inf-norm 4e-6, l2-norm 5e-6, epsilon 1e-6 added to the norm
    x = torch.tensor([[3e-6, -4e-6]], dtype=torch.float64)
    inf = build_regularizer("smart", {"norm": "inf"}).normalise(x)
    assert torch.allclose(inf, torch.tensor([[3 / 5, -4 / 5]], dtype=torch.float64))  # x / (4e-6 + 1e-6)
    l2 = build_regularizer("smart", {"norm": "l2"}).normalise(x)
    assert torch.allclose(l2, torch.tensor([[3 / 6, -4 / 6]], dtype=torch.float64))  # x / (5e-6 + 1e-6)
    l1 = build_regularizer("smart", {"norm": "l1"}).normalise(x)
    assert l1.tolist() == [[1.0, -1.0]]


def test_smart_norms_behave_as_documented():
    x = torch.randn(2, 5, 8)
    inf = build_regularizer("smart", {"norm": "inf"}).normalise(x)
    assert torch.allclose(inf.abs().amax(-1), torch.ones(2, 5), atol=1e-5)
    l2 = build_regularizer("smart", {"norm": "l2"}).normalise(x)
    assert torch.allclose(l2.norm(dim=-1), torch.ones(2, 5), atol=1e-5)
    l1 = build_regularizer("smart", {"norm": "l1"}).normalise(x)
    assert set(l1.unique().tolist()) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("norm", ["inf", "l2", "l1"])
def test_smart_runs_each_norm_and_logs(norm):
    model = tiny_model(dropout=0.0)
    batch = tiny_batch()
    reg = build_regularizer("smart", {"norm": norm})
    loss, logs = reg(model, batch, model(batch))
    assert torch.isfinite(loss) and loss.item() > 0
    assert 0.0 <= logs["smart_grad_share"] <= 1.0
    if norm == "inf":  # MT-DNN's default: per-token inf-norm m / (m + eps) ~ 1 (m ~ a few 1e-5, eps 1e-6)
        assert 0.8 < logs["smart_delta_inf"] <= 1.0


def test_smart_ball_projection_stays_in_ball():
    model = tiny_model(dropout=0.0)
    batch = tiny_batch()
    reg = build_regularizer("smart", {"projection": "ball", "radius": 1e-5, "step_size": 1.0, "k": 2})
    loss, logs = reg(model, batch, model(batch))
    assert logs["smart_delta_inf"] <= 1e-5 + 1e-12


def test_smart_ascent_beats_random_direction():
    model = tiny_model(dropout=0.0).eval()
    batch = tiny_batch(pad_last=0)
    clean = model(batch).detach()
    reg = build_regularizer("smart", {"projection": "ball", "radius": 0.05, "noise_var": 1e-3, "step_size": 1.0})
    captured = {}
    orig = reg.ascend

    def spy(delta, grad):
        out = orig(delta, grad)
        captured["delta"] = out
        return out

    reg.ascend = spy
    torch.manual_seed(0)
    reg(model, batch, clean)
    adv = captured["delta"]

    def inner(delta):
        with model.perturb(0, lambda h: h + delta):
            return losses.kl(clean, model(batch)).item()

    rand = torch.randn_like(adv).sign() * adv.abs().amax()
    assert inner(adv) > inner(rand)


def test_smart_non_finite_gradient_skips_term(monkeypatch):
    model = tiny_model(dropout=0.0)
    batch = tiny_batch()
    monkeypatch.setattr(losses, "adversarial_objective", lambda kind, c, n: (n * float("nan")).sum())
    reg = build_regularizer("smart")
    step = TrainStep(model, reg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, tl, rl, logs = step(batch)
    assert rl.item() == 0.0 and logs["smart_skipped"] == 1.0 and reg.skipped == 1
    # a skipped step leaves no noise behind and reports no ascent
    assert logs["smart_delta_inf"] == 0.0 and logs["smart_grad_share"] == 0.0
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # skips add up on the device, on top of a count restored from a checkpoint
    reg.skipped = 5
    for expected in (6, 7):
        _, _, _, logs = step(batch)
        assert int(logs["smart_skipped_total"]) == expected and reg.skipped == expected


# ---- R3F and all methods on all encoders --------------------------------------------------------------------

def _step_expected(model, batch, method: str, reg, logs: dict, seed: int) -> torch.Tensor:
    """The whole step's loss written out on the independent forward: cross entropy + alpha * the method's term,
    its noise drawn again from torch seed ``seed`` (the step draws it right after the clean pass)."""
    clean = ref.logits(model, batch)
    total = F.cross_entropy(clean.double(), batch["labels"])
    if method == "rapt":
        term = _rapt_expected(model, batch, int(logs["rapt_layer"]), 2.0, seed)
    elif method == "smart":  # one ascent step of 1e-3 from N(0, 1) * 1e-5 (the defaults)
        torch.manual_seed(seed)
        mask = batch["attention_mask"][..., None]
        d0 = torch.randn(batch["input_ids"].shape + (model.hidden_size,)) * 1e-5 * mask
        term = _smart_reference(model, batch, d0, 1e-3, regression=False, divergence=_sym_kl_stop_gradient)
    else:  # r3f: U(-eps, eps) on a detached token lookup, KL both ways with the gradient through both sides
        torch.manual_seed(seed)
        width, eps = model.hooks.word_embeddings.embedding_dim, reg.options.eps
        z = torch.empty(batch["input_ids"].shape + (width,)).uniform_(-eps, eps)
        term = ref.sym_kl_value(clean, ref.logits(model, batch, word_noise=z))
    return total + reg.alpha * term


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["smart", "rapt", "r3f"])
def test_every_method_on_every_encoder(arch, method):
    """The step's loss and every parameter's gradient equal those of the loss written out on the reference
    forward (dropout off, so the method's noise is the only randomness)."""
    model = tiny_model(arch=arch, dropout=0.0)
    batch = tiny_batch(token_types=arch not in ("distilbert", "roberta"))
    # R3F's default eps (1e-5) makes a term too small to show in the gradient: a larger one is tested
    options = {"rapt": {"max_layer": 2, "alpha": 0.5}, "smart": {}, "r3f": {"eps": 0.5, "lambda_": 2.0}}[method]
    reg = build_regularizer(method, options)
    torch.manual_seed(31)
    loss, tl, rl, logs = TrainStep(model, reg)(batch)
    assert rl.item() > 0
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected = _step_expected(model, batch, method, reg, logs, 31)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    expected.backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for name, g in want.items():
        assert torch.allclose(got[name], g.float(), rtol=1e-3, atol=1e-6 * float(g.abs().max()) + 1e-9), name
    emb = model.hooks.word_embeddings.weight.grad
    assert emb is not None and emb.abs().sum() > 0


def test_train_step_with_shared_lower_layers_equals_the_reference():
    """The step's clean pass records layer r for RAPT's shared path; loss as written out on the reference."""
    model = tiny_model(dropout=0.0)
    batch = tiny_batch()
    reg = build_regularizer("rapt", {"max_layer": 2, "alpha": 0.5, "share_lower_layers": True})
    torch.manual_seed(31)
    loss, _, rl, logs = TrainStep(model, reg)(batch)
    assert rl.item() > 0
    assert loss.item() == pytest.approx(_step_expected(model, batch, "rapt", reg, logs, 31).item(), rel=1e-5)


@pytest.mark.parametrize("share", [False, True], ids=["paper", "shared"])
def test_rapt_draws_the_micro_batch_layer_and_logs_the_noise_ratio(share):
    """Micro-batch 1 of step 3 perturbs layer_for_step(3, 1); the logged ratio is ||delta|| / ||h_r on real
    tokens||, with h_r and delta written out on the reference forward. The shared path does not run the blocks
    below r again."""
    model = tiny_model(dropout=0.0)
    batch = tiny_batch()
    reg = build_regularizer("rapt", {"max_layer": 2, "share_lower_layers": share}, seed=4)
    reg.step, reg.micro = 3, 1
    layer = reg.layer_for_step(3, 1)
    calls = []
    with reg.clean_pass(model, batch):
        clean = model(batch)
    handle = model.hooks.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    torch.manual_seed(8)
    _, logs = reg(model, batch, clean)
    handle.remove()
    assert logs["rapt_layer"] == layer and len(calls) == (0 if share and layer >= 1 else 1)
    torch.manual_seed(8)
    delta = _rapt_noise(batch["input_ids"].shape + (model.hidden_size,), batch["attention_mask"], 2.0)
    states: dict = {}
    ref.last_hidden(model.encoder, batch, record=states)
    real = states[layer] * batch["attention_mask"][..., None]
    assert float(logs["rapt_noise_ratio"]) == pytest.approx((delta.norm() / real.norm()).item(), rel=1e-4)


def test_standard_has_zero_regularizer():
    model = tiny_model()
    loss, tl, rl, _ = TrainStep(model, build_regularizer("standard"))(tiny_batch())
    assert rl.item() == 0.0 and loss.item() == pytest.approx(tl.item())


@pytest.mark.parametrize("method", ["smart", "rapt", "r3f"])
def test_same_seed_same_losses(method):
    """Three optimizer steps: the same seeds give the same losses (with dropout on), and a different torch seed
    gives different regularizer terms even without dropout (the term comes from random noise, not a constant)."""
    def run(torch_seed: int, dropout: float):
        model = tiny_model(dropout=dropout, seed=1)
        torch.manual_seed(torch_seed)
        reg = build_regularizer(method, {"max_layer": 2} if method == "rapt" else {}, seed=5)
        step = TrainStep(model, reg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        out = []
        for s in range(3):
            reg.step = s
            loss, _, rl, _ = step(tiny_batch(seed=s))
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append((loss.item(), rl.item()))
        return out

    assert run(5, 0.1) == run(5, 0.1)
    first, other = run(5, 0.0), run(6, 0.0)
    assert all(a[1] > 0 for a in first)
    assert all(a[1] != b[1] for a, b in zip(first, other)), (first, other)
