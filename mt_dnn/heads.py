"""Per-task output heads, chosen by task type through a small registry."""
from __future__ import annotations

import torch
from torch import nn

HEADS: dict[str, type[nn.Module]] = {}


def register_head(task_type: str):
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if task_type in HEADS:
            raise ValueError(f"head for {task_type!r} registered twice")
        if not issubclass(cls, nn.Module):
            raise TypeError(f"{cls.__name__} is not an nn.Module")
        HEADS[task_type] = cls
        return cls
    return wrap


@register_head("classification")
class ClassificationHead(nn.Module):
    """Dropout then a linear layer: pooled (B, H) -> logits (B, C)."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))


@register_head("regression")
class RegressionHead(ClassificationHead):
    """Dropout then a linear layer to one score: pooled (B, H) -> (B, 1)."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float):
        super().__init__(hidden, 1, dropout)


def build_head(task_type: str, hidden: int, num_outputs: int, dropout: float) -> nn.Module:
    if task_type not in HEADS:
        raise ValueError(f"no head for task type {task_type!r}; known: {', '.join(HEADS)}")
    return HEADS[task_type](hidden, num_outputs, dropout)
