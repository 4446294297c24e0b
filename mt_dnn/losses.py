"""Every loss in one place: task losses and the regularizers' divergences. All computed in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data_utils.task_def import TaskDef


def task_loss(task: TaskDef, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits: (B, C) (C = 1 for regression); labels: (B,) long or float. Returns the batch mean."""
    logits = logits.float()
    if task.loss == "mse":
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(sg(softmax(target)) || softmax(logits)), batch mean; the gradient flows through ``logits`` only."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), F.log_softmax(target_logits.detach().float(), dim=-1),
                    log_target=True, reduction="batchmean")


def sym_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MT-DNN's symmetric KL: KL(sg(p_a) || p_b) + KL(sg(p_b) || p_a); a, b: (B, C) logits.

    Each term's gradient flows through its second argument, so both inputs receive gradient.
    """
    return kl(a, b) + kl(b, a)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two (B, 1) regression outputs, in fp32; gradient flows through both."""
    return F.mse_loss(a.float(), b.float())


def divergence(kind: str, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """The regularizer's final term between clean and noisy outputs: ``sym_kl`` or ``mse`` (task's reg_loss)."""
    if kind == "sym_kl":
        return sym_kl(clean, noisy)
    if kind == "mse":
        return mse(clean, noisy)
    raise ValueError(f"unknown regularizer loss {kind!r}")


def log_odds(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MT-DNN's stabilised log-odds of probabilities p: -log(1 / (p + eps) - 1 + eps), as a constant (no gradient)."""
    return -(1.0 / (p.detach() + eps) - 1.0 + eps).log()


def adversarial_objective(kind: str, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """The inner objective SMART ascends, on MT-DNN's scale: a sum over the batch, not a mean.

    Classification (clean, noisy: (B, C) logits): ``2 * sum_{rows, classes} p_noisy * (l(p_noisy) - l(p_clean))``
    with p = softmax and l the log-odds of ``log_odds`` held constant, so the gradient flows through the leading
    p_noisy only. Regression ((B, 1) outputs): ``sum (noisy - sg(clean))^2``. Each example's gradient is its own,
    so the ascent step does not depend on the batch size or on how a batch is split across processes.
    """
    if kind == "mse":
        return (noisy.float() - clean.detach().float()).pow(2).sum()
    p_noisy = F.softmax(noisy.float(), dim=-1)
    p_clean = F.softmax(clean.detach().float(), dim=-1)
    return 2.0 * (p_noisy * (log_odds(p_noisy) - log_odds(p_clean))).sum()


def sym_kl_both(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R3F's symmetric KL as fairseq computes it: KL(p_a || p_b) + KL(p_b || p_a), summed over classes and
    averaged over rows, in fp32, with the gradient through both arguments of both terms. a, b: (B, C) logits."""
    la, lb = F.log_softmax(a.float(), dim=-1), F.log_softmax(b.float(), dim=-1)
    return ((la.exp() - lb.exp()) * (la - lb)).sum() / a.shape[0]
