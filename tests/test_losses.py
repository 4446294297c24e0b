"""The task losses and the regularizers' divergences against hand-worked examples and formulas written out here.

Every expected number below is derived by hand in the comment beside it (or is the formula typed out in
float64), never taken from ``mt_dnn.losses`` itself.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from data_utils.task_def import load_task_defs
from mt_dnn import losses
from mt_dnn.perturbation import build_regularizer
from mt_dnn.step import TrainStep
from tests import reference_forward as ref
from tests.conftest import tiny_batch, tiny_model

TASKS = load_task_defs()


# ---- task losses ------------------------------------------------------------------------------------------

def test_regression_task_loss_is_the_mean_squared_error_by_hand():
    # outputs 1.0, 2.5, -0.5 against scores 2.0, 2.0, 0.5: errors -1, 0.5, -1 -> (1 + 0.25 + 1) / 3 = 0.75
    # (the mean absolute error would be 2.5 / 3 = 0.833, the summed squared error 2.25)
    out = torch.tensor([[1.0], [2.5], [-0.5]])
    scores = torch.tensor([2.0, 2.0, 0.5])
    assert losses.task_loss(TASKS["stsb"], out, scores).item() == pytest.approx(0.75, abs=1e-7)
    # integer scores and a bf16 output: the same 0.75, computed in fp32
    loss = losses.task_loss(TASKS["stsb"], out.to(torch.bfloat16), torch.tensor([2, 2, 0.5]))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.75, abs=1e-7)


def test_regression_task_loss_gradient_is_two_error_over_n():
    # d/do mean((o - y)^2) = 2 (o - y) / N: errors -1, 0.5, -1 over N = 3 -> -2/3, 1/3, -2/3
    out = torch.tensor([[1.0], [2.5], [-0.5]], requires_grad=True)
    losses.task_loss(TASKS["stsb"], out, torch.tensor([2.0, 2.0, 0.5])).backward()
    assert torch.allclose(out.grad, torch.tensor([[-2 / 3], [1 / 3], [-2 / 3]]), atol=1e-7)


def test_classification_task_loss_is_the_mean_negative_log_likelihood_by_hand():
    # row 1: logits (0, ln 3) -> p = (1/4, 3/4), label 1 -> -ln(3/4); row 2: logits (0, 0), label 0 -> ln 2
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    assert losses.task_loss(TASKS["rte"], logits, torch.tensor([1, 0])).item() == pytest.approx(expected, abs=1e-7)
    # three classes (MNLI): logits (ln 1, ln 2, ln 5) -> p = (1/8, 2/8, 5/8); label 2 -> -ln(5/8)
    three = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]])
    assert losses.task_loss(TASKS["mnli"], three, torch.tensor([2])).item() == pytest.approx(-math.log(5 / 8), abs=1e-7)


# ---- the regularizers' divergences ------------------------------------------------------------------------

def test_regression_divergence_is_the_mean_squared_difference_with_gradient_through_both():
    # clean 1, 2, 3 against noisy 1.5, 1, 3: differences -0.5, 1, 0 -> (0.25 + 1 + 0) / 3 = 5/12
    clean = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    noisy = torch.tensor([[1.5], [1.0], [3.0]], requires_grad=True)
    loss = losses.divergence("mse", clean, noisy)
    assert loss.item() == pytest.approx(5 / 12, abs=1e-7)
    loss.backward()
    # d/dclean = 2 (clean - noisy) / 3 = (-1/3, 2/3, 0); d/dnoisy is its negative
    assert torch.allclose(clean.grad, torch.tensor([[-1 / 3], [2 / 3], [0.0]]), atol=1e-7)
    assert torch.allclose(noisy.grad, -clean.grad, atol=1e-7)


def test_classification_divergence_is_mtdnns_symmetric_kl_by_hand():
    # p = softmax(0, ln 3) = (1/4, 3/4), q = softmax(0, 0) = (1/2, 1/2), one row:
    # KL(p||q) + KL(q||p) = sum (p - q)(ln p - ln q) = (-1/4) ln(1/2) + (1/4) ln(3/2) = (1/4) ln 3
    a = torch.tensor([[0.0, math.log(3.0)]])
    b = torch.tensor([[0.0, 0.0]])
    assert losses.divergence("sym_kl", a, b).item() == pytest.approx(math.log(3.0) / 4, abs=1e-7)
    assert losses.sym_kl_both(a, b).item() == pytest.approx(math.log(3.0) / 4, abs=1e-7)
    # batch mean: the same row twice and a row with a = b (0) -> (2 * ln3/4 + 0) / 3
    a3, b3 = torch.cat([a, a, b]), torch.cat([b, b, b])
    assert losses.divergence("sym_kl", a3, b3).item() == pytest.approx(math.log(3.0) / 6, abs=1e-7)
    with pytest.raises(ValueError, match="unknown regularizer loss 'l1'"):
        losses.divergence("l1", a, b)


def test_kl_is_target_first_and_sends_no_gradient_to_the_target():
    # KL(p||q) with p = (1/4, 3/4), q = (1/2, 1/2): (1/4) ln(1/2) + (3/4) ln(3/2)
    target = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = losses.kl(target, logits)
    assert loss.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-7)
    loss.backward()
    assert target.grad is None
    # d/dlogits KL(p || softmax(l)) = softmax(l) - p = (1/4, -1/4)
    assert torch.allclose(logits.grad, torch.tensor([[0.25, -0.25]]), atol=1e-7)


def test_log_odds_and_the_adversarial_objective_by_hand():
    # l(p) = -ln(1 / (p + 1e-6) - 1 + 1e-6): p = 1/5 -> -ln(1/(0.200001) - 1 + 1e-6), close to ln(1/4)
    assert losses.log_odds(torch.tensor([0.2], dtype=torch.float64)).item() == pytest.approx(
        -math.log(1 / 0.200001 - 1 + 1e-6), abs=1e-12)
    assert losses.log_odds(torch.tensor([0.2])).item() == pytest.approx(math.log(0.25), abs=1e-4)
    # classification: 2 * sum p_n (l(p_n) - l(p_c)); p_n = (1/4, 3/4), p_c = (1/2, 1/2), no eps: l = ln(p / (1-p))
    # l(p_n) = (-ln 3, ln 3), l(p_c) = (0, 0) -> 2 * (1/4 * -ln 3 + 3/4 * ln 3) = ln 3
    noisy = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    clean = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert losses.adversarial_objective("sym_kl", clean, noisy).item() == pytest.approx(math.log(3.0), abs=1e-4)
    # two identical rows: a sum over the batch (2 ln 3), not a mean
    assert losses.adversarial_objective("sym_kl", clean.repeat(2, 1), noisy.repeat(2, 1)).item() == pytest.approx(
        2 * math.log(3.0), abs=1e-4)
    # regression: summed squared error, (1.5 - 1)^2 + (1 - 2)^2 = 1.25 (sum, not the mean 0.625)
    out = losses.adversarial_objective("mse", torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [1.0]]))
    assert out.item() == pytest.approx(1.25, abs=1e-7)


def test_losses_name_their_class_dimension():
    """Every softmax over classes names its dimension (no implicit-dimension warning from torch)."""
    a, b = torch.tensor([[0.0, 1.0], [2.0, 0.5]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (losses.kl(a, b), losses.sym_kl(a, b), losses.sym_kl_both(a, b),
                      losses.adversarial_objective("sym_kl", a, b), losses.task_loss(TASKS["rte"], a, torch.tensor([0, 1]))):
            assert torch.isfinite(value)


# ---- the whole step on a regression task, against the independent forward --------------------------------

@pytest.mark.parametrize("method", ["standard", "rapt"])
def test_regression_step_is_mse_task_loss_plus_alpha_mse_regularizer(method):
    """TrainStep on STS-B: mean((o - y)^2) + alpha * mean((o_clean - o_noisy)^2), both written out on the
    reference forward (tests.reference_forward) with the noise drawn again from the same seed."""
    model = tiny_model(tasks=("stsb",), dropout=0.0).eval()
    batch = tiny_batch("stsb", regression=True, batch=4, pad_last=3)
    reg = build_regularizer(method, {"alpha": 0.7, "eta": 1.5, "max_layer": 2} if method == "rapt" else {}, seed=2)
    if method == "rapt":
        reg.layer_for_step = lambda step, micro=0: 1
    torch.manual_seed(6)
    loss, task_loss, reg_loss, _ = TrainStep(model, reg)(batch)
    clean = ref.logits(model, batch).double()
    expected_task = ((clean.squeeze(-1) - batch["labels"].double()) ** 2).mean()
    assert task_loss.item() == pytest.approx(expected_task.item(), rel=1e-5)
    if method == "standard":
        assert reg_loss.item() == 0.0 and loss.item() == pytest.approx(expected_task.item(), rel=1e-5)
        return
    torch.manual_seed(6)
    mask = batch["attention_mask"][..., None].float()
    delta = torch.randn(batch["input_ids"].shape + (model.hidden_size,)) * mask
    delta = 1.5 * delta / delta.abs().amax(dim=(1, 2), keepdim=True)
    noisy = ref.logits(model, batch, inject={1: lambda h: h + delta}).double()
    expected_reg = ((clean - noisy) ** 2).mean()
    assert expected_reg.item() > 1e-6
    assert reg_loss.item() == pytest.approx(expected_reg.item(), rel=1e-4)
    assert loss.item() == pytest.approx((expected_task + 0.7 * expected_reg).item(), rel=1e-5)


def test_task_defs_say_mse_for_regression_and_cross_entropy_otherwise():
    """The losses above are the ones the task file asks for (glue_tasks.yml: STS-B is the one regression task)."""
    for name, task in TASKS.items():
        regression = task.type == "regression"
        assert (task.loss, task.reg_loss) == (("mse", "mse") if regression else ("cross_entropy", "sym_kl")), name
