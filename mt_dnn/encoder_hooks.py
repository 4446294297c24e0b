"""Hooks on a Hugging Face encoder's own modules: perturb layer r, perturb the token embeddings, re-run from r.

Layers are numbered as in the paper and as the encoder's own ``hidden_states`` output: layer 0 is the input of
the transformer stack (the embedding output after LayerNorm, dropout and, for ELECTRA, the embedding
projection); layer r >= 1 is what the encoder passes to block r + 1. For most encoders that is block r's
output; for DeBERTa-v2 with a convolution layer (``conv_kernel_size > 0``) layer 1 is the conv's output (the conv
mixes block 1's output with the embedding output). Noise never goes in through ``inputs_embeds``, which would
re-add position/type embeddings and LayerNorm.

Supported: BERT, RoBERTa, ELECTRA, DeBERTa(-v2) (``encoder.layer``) and DistilBERT (``transformer.layer``), also
inside a peft wrapper (LoRA): the hooks go on the wrapped model's own modules.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from data_utils.task_def import ConfigError

_HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x")


def _hidden_of(output: Any) -> torch.Tensor:
    """A block returns a tensor (BERT in transformers 5) or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden,) + output[1:]
    if isinstance(output, list):
        return [hidden] + output[1:]
    return hidden


def _replace_first(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """A module call's arguments with its hidden-state argument (first positional, or a known keyword) replaced."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    for key in _HIDDEN_KWARGS:
        if key in kwargs:
            return args, {**kwargs, key: hidden}
    raise RuntimeError("cannot find the hidden states among a module's arguments")


def _first(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    return next(kwargs[k] for k in _HIDDEN_KWARGS if k in kwargs)


def unwrap_peft(module: nn.Module) -> nn.Module:
    """The model inside peft's wrappers (``PeftModel.get_base_model()``, a tuner's ``model``), else ``module``.

    peft is optional, so it is recognised by the wrapper's own module name rather than imported. The adapted
    layers stay where they are: inside the returned model, the blocks call them as usual."""
    while type(module).__module__.split(".")[0] == "peft":
        inner = module.get_base_model() if hasattr(type(module), "get_base_model") else module._modules.get("model")
        if not isinstance(inner, nn.Module) or inner is module:
            break
        module = inner
    return module


@dataclass
class LayerCapture:
    """What a clean pass leaves behind for re-running the modules above layer r (shared-lower-layers RAPT)."""

    layer: int
    hidden: torch.Tensor | None = None  # (B, T, H): layer r's state as the encoder passed it on
    calls: dict[int, tuple[tuple, dict]] = field(default_factory=dict)  # block index -> (args, kwargs)
    conv_mask: torch.Tensor | None = None  # (B, T) input mask the DeBERTa-v2 conv was called with


class EncoderHooks:
    """Finds an encoder's embedding table, transformer stack and blocks, and offers the hooks the methods use."""

    def __init__(self, encoder: nn.Module):
        encoder = unwrap_peft(encoder)
        embeddings = getattr(encoder, "embeddings", None)
        words = getattr(embeddings, "word_embeddings", None)
        stack = getattr(encoder, "encoder", None) or getattr(encoder, "transformer", None)
        blocks = getattr(stack, "layer", None)
        if words is None or not isinstance(blocks, nn.ModuleList):
            raise ConfigError(f"unsupported encoder {type(encoder).__name__}: cannot find its embeddings and blocks")
        self.word_embeddings: nn.Module = words
        self.stack: nn.Module = stack
        self.blocks: nn.ModuleList = blocks
        self.conv: nn.Module | None = getattr(stack, "conv", None)  # DeBERTa-v2 with conv_kernel_size > 0

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer <= self.num_layers:
            raise ConfigError(f"layer {layer} does not exist: this encoder has layers 0..{self.num_layers} "
                              f"(0 = embedding output)")

    def output_module(self, layer: int) -> nn.Module:
        """The module whose output is layer ``layer`` >= 1 (the conv for layer 1 of a conv DeBERTa-v2)."""
        if layer == 1 and self.conv is not None:
            return self.conv
        return self.blocks[layer - 1]

    @contextlib.contextmanager
    def perturb(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Inside the block, layer ``layer``'s state h (B, T, H) is replaced by ``fn(h)`` for every later module."""
        self.check_layer(layer)
        if layer == 0:  # the stack's input: every block and the conv read the perturbed embeddings
            def pre_hook(module, args, kwargs):
                return _replace_first(args, kwargs, fn(_first(args, kwargs)))
            handle = self.stack.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            def hook(module, args, output):
                return _with_hidden(output, fn(_hidden_of(output)))
            handle = self.output_module(layer).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def perturb_token_embeddings(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Inside the block, the token embedding lookup e (B, T, E) is replaced by ``fn(e)`` (before position/type
        embeddings and LayerNorm)."""
        handle = self.word_embeddings.register_forward_hook(lambda m, a, out: fn(out))
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def capture(self, layer: int) -> Iterator[LayerCapture]:
        """Record layer ``layer``'s state and the call arguments of every module above it during a pass."""
        self.check_layer(layer)
        cap = LayerCapture(layer=layer)
        handles = []
        for i in range(layer, self.num_layers):
            def pre_hook(module, args, kwargs, i=i):
                cap.calls[i] = (args, kwargs)
                if i == layer:
                    cap.hidden = _first(args, kwargs)
            handles.append(self.blocks[i].register_forward_pre_hook(pre_hook, with_kwargs=True))
        if self.conv is not None and layer == 0:
            def conv_pre_hook(module, args, kwargs):
                cap.conv_mask = args[2] if len(args) > 2 else kwargs["input_mask"]
            handles.append(self.conv.register_forward_pre_hook(conv_pre_hook, with_kwargs=True))
        if layer == self.num_layers and layer > 0:
            def hook(module, args, output):
                cap.hidden = _hidden_of(output)
            handles.append(self.output_module(layer).register_forward_hook(hook))
        try:
            yield cap
        finally:
            for h in handles:
                h.remove()

    def rerun_from(self, cap: LayerCapture, hidden: torch.Tensor) -> torch.Tensor:
        """Run every module above layer r on ``hidden`` (B, T, H) with the captured arguments; returns the last
        layer's states (B, T, H)."""
        for i in range(cap.layer, self.num_layers):
            args, kwargs = _replace_first(*cap.calls[i], hidden)
            out = _hidden_of(self.blocks[i](*args, **kwargs))
            if i == 0 and self.conv is not None:  # layer 1 of a conv DeBERTa-v2 mixes block 1 with layer 0
                out = self.conv(hidden, out, cap.conv_mask)
            hidden = out
        return hidden


class HookedEncoder:
    """The part of the encoder interface the perturbation methods use that only forwards to ``self.hooks`` (an
    :class:`EncoderHooks` on the model's encoder); the multi-task model and the Hugging Face classifier both
    inherit it and add ``logits_from``, ``reg_loss_kind``, ``num_layers`` and ``hidden_size`` themselves."""

    hooks: EncoderHooks

    def check_layer(self, layer: int) -> None:
        self.hooks.check_layer(layer)

    def perturb(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
        """Context: layer ``layer``'s state h (B, T, H) is replaced by ``fn(h)`` for every later module."""
        return self.hooks.perturb(layer, fn)

    def perturb_token_embeddings(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        """Context: the token embedding lookup e (B, T, E) is replaced by ``fn(e)``."""
        return self.hooks.perturb_token_embeddings(fn)

    def capture(self, layer: int):
        """Context yielding a ``LayerCapture`` of layer ``layer`` filled during the pass inside it."""
        return self.hooks.capture(layer)
