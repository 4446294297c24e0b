"""LoRA adapters on the multi-task model's encoder (``--lora_rank``), through peft.

Each adapted linear layer computes W x + b + (alpha / r) * B A x, with W and b frozen, A (r, in) and B (out, r)
trained (B starts at zero, so training starts from the encoder's own outputs). Everything else of the encoder is
frozen; the task heads stay fully trainable. The encoder becomes a ``peft.PeftModel``; the hooks the regularizers
use find the encoder's own modules inside it (``mt_dnn.encoder_hooks.unwrap_peft``), so RAPT, SMART and R3F
perturb the adapted encoder exactly as they perturb a plain one.

A saved model (``best/``) holds the merged weights W + (alpha / r) B A (peft's ``merge_and_unload`` on a copy), so
it is a plain model that ``mt_dnn.predict`` and ``mt_dnn.load_run`` load as any other. A resumable checkpoint keeps
the adapters as they are.
"""
from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from data_utils.task_def import ConfigError
from mt_dnn.encoder_hooks import EncoderHooks, unwrap_peft

logger = logging.getLogger(__name__)

# the attention query and value projections (the LoRA paper's choice) of each supported encoder family
DEFAULT_TARGETS = {
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"), "distilbert": ("q_lin", "v_lin"),
}


def target_modules(encoder: nn.Module, targets: str | None) -> list[str]:
    """The names (last part of the module path) of the linear layers that get adapters: ``targets`` split at
    commas, or the attention query and value projections of the encoder's family. Every name must match at least
    one ``nn.Linear`` of the encoder (a ConfigError listing the names it has otherwise)."""
    kind = encoder.config.model_type
    if targets:
        names = [t.strip() for t in targets.split(",") if t.strip()]
    elif kind in DEFAULT_TARGETS:
        names = list(DEFAULT_TARGETS[kind])
    else:
        raise ConfigError(f"--lora_rank: no default adapter targets for a {kind} encoder; give "
                          f"--lora_target_modules (comma-separated names of its linear layers)")
    have = sorted({name.rsplit(".", 1)[-1] for name, m in encoder.named_modules() if isinstance(m, nn.Linear)})
    missing = [n for n in names if n not in have]
    if missing or not names:
        raise ConfigError(f"--lora_target_modules: no linear layer named {', '.join(missing) or '(empty)'} in this "
                          f"{kind} encoder (its linear layers: {', '.join(have)})")
    return names


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: str | None) -> list[str]:
    """Wrap ``model.encoder`` (a multi-task model's) in LoRA adapters of rank ``rank``, scaling ``alpha / rank``
    and ``dropout`` on their input; every other encoder weight is frozen, the heads are left as they are. The
    adapters' A is drawn from the torch RNG (peft's Kaiming-uniform), B is zero. Returns the adapted layer names."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--lora_rank needs peft: pip install peft (or the project's 'lora' extra)") from None
    names = target_modules(model.encoder, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model.encoder = get_peft_model(model.encoder, config)
    model.hooks = EncoderHooks(model.encoder)  # the same modules as before: the adapters sit inside the blocks
    mine = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.encoder.parameters())
    logger.info("LoRA rank %d, alpha %g, dropout %g on %s: %.3fM of the encoder's %.1fM parameters train "
                "(and the task heads)", rank, alpha, dropout, ",".join(names), mine / 1e6, total / 1e6)
    return names


def is_lora(encoder: nn.Module) -> bool:
    return unwrap_peft(encoder) is not encoder


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()``, with a LoRA encoder's weights merged (W + (alpha / r) B A) under the plain encoder's
    names: the state dict of the same model without adapters. The model itself is left as it is."""
    state = model.state_dict()
    if not is_lora(model.encoder):
        return state
    with torch.no_grad():
        merged = copy.deepcopy(model.encoder).merge_and_unload()
    out = {f"encoder.{k}": v for k, v in merged.state_dict().items()}
    out.update({k: v for k, v in state.items() if not k.startswith("encoder.")})
    return out
