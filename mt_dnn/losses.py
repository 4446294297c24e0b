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


def adversarial_objective(kind: str, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """The inner objective SMART ascends: KL(sg(p_clean) || p_noisy), or MSE to sg(clean) for regression."""
    if kind == "mse":
        return mse(clean.detach(), noisy)
    return kl(clean, noisy)
