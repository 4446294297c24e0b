"""An independent forward pass for the method tests: our own loop over an encoder's blocks, no project code.

It calls the Hugging Face submodules (embeddings, blocks, DeBERTa-v2's conv) one by one, builds the attention
masks itself and can replace layer r's state by ``inject[r](h)``. Layer r is what the encoder passes to block
r + 1 (layer 0: the embedding output; for DeBERTa-v2 with a conv layer, layer 1 is the conv's output).
The head is applied by hand: [CLS] (or masked-mean) pooling, then the head's linear layer (eval mode).
Inside :func:`lora_by_formula`, every LoRA-adapted linear layer is computed from its tensors as
W x + b + (alpha / r) * B A x, without the adapter library's forward.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


def _stack(encoder):
    return getattr(encoder, "encoder", None) or getattr(encoder, "transformer")


def _plain(encoder):
    """The encoder inside an adapter wrapper (``get_base_model()``), else the encoder itself."""
    return encoder.get_base_model() if hasattr(type(encoder), "get_base_model") else encoder


@contextlib.contextmanager
def lora_by_formula(model, alpha: float, rank: int) -> Iterator[int]:
    """Inside the block every LoRA-adapted linear layer of ``model`` (one holding ``base_layer``, ``lora_A`` and
    ``lora_B``) computes x W^T + b + (alpha / rank) * x A^T B^T from its weights (eval: no adapter dropout), with
    ``alpha`` and ``rank`` as the test configured them. Yields the number of layers so computed."""
    layers = [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]

    def formula(m):
        def forward(x: torch.Tensor) -> torch.Tensor:
            (a,), (b,) = m.lora_A.values(), m.lora_B.values()
            base = F.linear(x, m.base_layer.weight, m.base_layer.bias)
            return base + (alpha / rank) * F.linear(F.linear(x, a.weight), b.weight)
        return forward

    for m in layers:
        m.forward = formula(m)
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.forward


def embed(encoder, batch: dict, word_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Layer 0 (B, T, H). With ``word_noise``, the encoder's own embedding module gets
    ``sg(token lookup) + word_noise`` as ``inputs_embeds`` (position/type embeddings and LayerNorm as usual)."""
    encoder = _plain(encoder)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    types = batch.get("token_type_ids")
    emb = encoder.embeddings
    kind = encoder.config.model_type
    if word_noise is None:
        if kind == "distilbert":
            h = emb(ids)
        elif kind == "deberta-v2":
            h = emb(input_ids=ids, token_type_ids=types, mask=mask)
        else:
            h = emb(input_ids=ids, token_type_ids=types)
    else:
        e = emb.word_embeddings(ids).detach() + word_noise
        if kind == "distilbert":
            h = emb(None, e)
        elif kind == "deberta-v2":
            h = emb(token_type_ids=types, mask=mask, inputs_embeds=e)
        elif kind == "roberta":  # positions from the ids (padding-aware), as the ids path computes them
            pos = (torch.cumsum(ids.ne(emb.padding_idx).int(), 1) * ids.ne(emb.padding_idx).int()).long()
            h = emb(input_ids=None, token_type_ids=types, position_ids=pos + emb.padding_idx, inputs_embeds=e)
        else:
            h = emb(token_type_ids=types, inputs_embeds=e)
    if hasattr(encoder, "embeddings_project"):  # ELECTRA: layer 0 is after the projection
        h = encoder.embeddings_project(h)
    return h


def last_hidden(encoder, batch: dict, inject: dict[int, Callable] | None = None,
                word_noise: torch.Tensor | None = None, record: dict | None = None) -> torch.Tensor:
    """The last layer's states (B, T, H) by our own loop; ``inject[r]`` replaces layer r's state; ``record[r]``
    receives layer r's state as passed on (after injection)."""
    inject = inject or {}
    encoder = _plain(encoder)
    mask = batch["attention_mask"]
    h = embed(encoder, batch, word_noise)
    stack = _stack(encoder)
    kind = encoder.config.model_type
    if kind == "deberta-v2":
        mask4 = (mask[:, None, None, :] * mask[:, None, :, None]).to(torch.uint8)  # (B, 1, T, T)
        rel_pos = stack.get_rel_pos(h)
        rel_emb = stack.get_rel_embedding()
    else:  # additive mask (B, 1, 1, T): 0 on real tokens, a large negative number on padding
        mask4 = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min

    def step(r: int, state: torch.Tensor) -> torch.Tensor:
        if r in inject:
            state = inject[r](state)
        if record is not None:
            record[r] = state
        return state

    h = step(0, h)
    layer0 = h
    for i, block in enumerate(stack.layer):
        if kind == "deberta-v2":
            out = block(h, mask4, query_states=None, relative_pos=rel_pos, rel_embeddings=rel_emb)
        else:
            out = block(h, mask4)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if i == 0 and getattr(stack, "conv", None) is not None:
            out = stack.conv(layer0, out, mask)
        h = step(i + 1, out)
    return h


def head_logits(model, task: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pool by hand ([CLS] or masked mean) and apply the task head's linear layer: (B, T, H) -> (B, C)."""
    if model.pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    linear = model.heads[model.task_defs[task].head_name].out
    return F.linear(pooled, linear.weight, linear.bias)


def logits(model, batch: dict, **kw) -> torch.Tensor:
    return head_logits(model, batch["task"], last_hidden(model.encoder, batch, **kw), batch["attention_mask"])


# ---- the formulas, written out -------------------------------------------------------------------------

def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """sum over classes of p (log p - log q), per row: (B,)."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def sym_kl_value(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    return (kl_rows(la, lb) + kl_rows(lb, la)).mean()


def mse_value(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.double() - b.double()) ** 2).mean()


def mtdnn_inner(clean: torch.Tensor, noisy: torch.Tensor, regression: bool) -> torch.Tensor:
    """MT-DNN's SMART inner objective: 2 * sum p_adv * (l(p_adv) - l(p_clean)), l(q) = -log(1/(q+1e-6) - 1 + 1e-6)
    taken as a constant; regression: summed squared error to sg(clean)."""
    if regression:
        return ((noisy - clean.detach()) ** 2).sum()
    p = torch.softmax(noisy, -1)
    q = torch.softmax(clean.detach(), -1)
    lp = -torch.log(1.0 / (p.detach() + 1e-6) - 1.0 + 1e-6)
    lq = -torch.log(1.0 / (q + 1e-6) - 1.0 + 1e-6)
    return 2.0 * (p * (lp - lq)).sum()
