"""In-context word vectors for the diversity analysis: words of a row, word-type means, neighbours, noise."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from data_utils.glue import Example
from data_utils.task_def import TaskDef
from mt_dnn import losses
from mt_dnn.model import MultiTaskModel
from mt_dnn.perturbation import Rapt, Smart

logger = logging.getLogger(__name__)

WordSpans = list[tuple[str, list[int]]]  # (lower-cased word, token positions of its pieces) per kept word


# ---- words of a tokenized row -------------------------------------------------------------------------------

def keep_word(word: str) -> bool:
    """A word counts unless it holds no letter (punctuation-only, pure digits, numbers like 1,000)."""
    return any(c.isalpha() for c in word)


def row_words(word_ids: Sequence[int | None], sequence_ids: Sequence[int | None],
              offsets: Sequence[tuple[int, int]], texts: Sequence[str | None]) -> WordSpans:
    """The words of one tokenized row, in order, each with the positions of its word pieces.

    ``word_ids``/``sequence_ids``/``offsets`` are the fast tokenizer's per-token values (length T); a word is
    identified by (sequence, word id), its text is the span of its pieces in ``texts[sequence]``, lower-cased.
    Special tokens (word id None) and words without a letter are left out.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for pos, (w, s) in enumerate(zip(word_ids, sequence_ids)):
        if w is None or s is None:
            continue
        groups.setdefault((s, w), []).append(pos)
    out: WordSpans = []
    for (s, _), positions in groups.items():
        start = min(offsets[p][0] for p in positions)
        end = max(offsets[p][1] for p in positions)
        word = (texts[s] or "")[start:end].lower()
        if keep_word(word):
            out.append((word, positions))
    return out


def word_vector(hidden: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """hidden (T, H), the positions of a word's pieces -> the word's vector (H,) = mean of its pieces."""
    return hidden[positions].mean(dim=0)


class WordTypeAverager:
    """Running mean of in-context word vectors per word type (a word = mean of its pieces)."""

    def __init__(self, hidden_size: int):
        self.hidden_size = hidden_size
        self.index: dict[str, int] = {}
        self.sums = torch.zeros(0, hidden_size, dtype=torch.float64)  # (capacity, H)
        self.counts = torch.zeros(0, dtype=torch.float64)  # (capacity,)

    def _id(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.index)
            if len(self.index) > len(self.counts):  # grow by doubling
                grow = max(len(self.counts), 64)
                self.sums = torch.cat([self.sums, torch.zeros(grow, self.hidden_size, dtype=torch.float64)])
                self.counts = torch.cat([self.counts, torch.zeros(grow, dtype=torch.float64)])
        return self.index[word]

    def add(self, hidden: torch.Tensor, rows: list[WordSpans]) -> None:
        """hidden (B, T, H); ``rows[b]`` the words of batch row b. Each word occurrence counts once."""
        occ_rows: list[int] = []
        occ_pos: list[int] = []
        occ_of_piece: list[int] = []
        types: list[int] = []
        for b, words in enumerate(rows):
            for word, positions in words:
                occ = len(types)
                types.append(self._id(word))
                occ_rows += [b] * len(positions)
                occ_pos += positions
                occ_of_piece += [occ] * len(positions)
        if not types:
            return
        pieces = hidden[occ_rows, occ_pos].double()  # (N, H)
        piece_of = torch.tensor(occ_of_piece)
        occ_sum = torch.zeros(len(types), self.hidden_size, dtype=torch.float64).index_add_(0, piece_of, pieces)
        occ_vec = occ_sum / torch.bincount(piece_of, minlength=len(types)).unsqueeze(1)  # (K, H)
        type_ids = torch.tensor(types)
        self.sums.index_add_(0, type_ids, occ_vec)
        self.counts.index_add_(0, type_ids, torch.ones(len(types), dtype=torch.float64))

    def result(self) -> tuple[list[str], torch.Tensor]:
        """(vocabulary in first-seen order, mean vectors (V, H) float32)."""
        n = len(self.index)
        return list(self.index), (self.sums[:n] / self.counts[:n].unsqueeze(1)).float()


def top_similar(target: torch.Tensor, vocab: list[str], matrix: torch.Tensor, exclude: str,
                k: int) -> list[tuple[str, float]]:
    """The ``k`` word types whose vectors (``matrix`` (V, H)) are most cosine-similar to ``target`` (H,),
    ``exclude`` left out; sorted by similarity, highest first (ties: first-seen word first)."""
    sims = F.cosine_similarity(matrix.float(), target.float().unsqueeze(0), dim=-1)  # (V,)
    order = torch.argsort(sims, descending=True, stable=True).tolist()
    return [(vocab[i], float(sims[i])) for i in order if vocab[i] != exclude][:k]


# ---- running a model ----------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised inside a layer hook once the wanted layer's states are recorded (skips the blocks above it)."""


def hidden_at(model: MultiTaskModel, batch: dict, layer: int) -> torch.Tensor:
    """Layer ``layer``'s output (B, T, H) for ``batch`` (0 = embedding output); the blocks above are not run."""
    seen: dict[str, torch.Tensor] = {}

    def record(h: torch.Tensor) -> torch.Tensor:
        seen["h"] = h
        raise _Stop

    try:
        with torch.no_grad(), model.perturb(layer, record):
            model.encoder(**model.encoder_inputs(batch))
    except _Stop:
        pass
    if "h" not in seen:
        raise RuntimeError(f"layer {layer} was never reached in the forward pass")
    return seen["h"]


@dataclass
class Tokenized:
    """Rows tokenized with offsets: ids and token types per row (1-D LongTensors) and their kept words."""

    input_ids: list[torch.Tensor]
    token_type_ids: list[torch.Tensor] | None
    words: list[WordSpans]


def tokenize(tokenizer, task: TaskDef, examples: list[Example], max_len: int) -> Tokenized:
    """Tokenize single sentences or pairs (truncated longest first) and find each row's words."""
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if task.text_b else None
    want_types = "token_type_ids" in tokenizer.model_input_names
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_len, padding=False,
                    return_offsets_mapping=True, return_token_type_ids=want_types, return_attention_mask=False)
    words = [row_words(enc.word_ids(i), enc.sequence_ids(i), enc["offset_mapping"][i],
                       (texts_a[i], texts_b[i] if texts_b else None)) for i in range(len(examples))]
    ids = [torch.tensor(x, dtype=torch.long) for x in enc["input_ids"]]
    types = [torch.tensor(x, dtype=torch.long) for x in enc["token_type_ids"]] if want_types else None
    return Tokenized(ids, types, words)


def make_batch(tok: Tokenized, rows: list[int], pad_id: int, task: str, device: torch.device) -> dict:
    """Pad ``rows`` to their longest: {"task", "input_ids" (B, T), "attention_mask" (B, T), "token_type_ids"}."""
    longest = max(len(tok.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    types = torch.zeros((len(rows), longest), dtype=torch.long)
    for j, i in enumerate(rows):
        n = len(tok.input_ids[i])
        ids[j, :n] = tok.input_ids[i]
        mask[j, :n] = 1
        if tok.token_type_ids is not None:
            types[j, :n] = tok.token_type_ids[i]
    batch = {"task": task, "input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if tok.token_type_ids is not None:
        batch["token_type_ids"] = types.to(device)
    return batch


def word_type_vectors(model: MultiTaskModel, tokenizer, task: TaskDef, examples: list[Example], layer: int,
                      batch_size: int, max_len: int, device: torch.device) -> tuple[list[str], torch.Tensor]:
    """Mean in-context vector at ``layer`` of every word type of ``examples``: (vocabulary, (V, H))."""
    tok = tokenize(tokenizer, task, examples, max_len)
    order = sorted(range(len(examples)), key=lambda i: len(tok.input_ids[i]))
    averager = WordTypeAverager(model.encoder.config.hidden_size)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        hidden = hidden_at(model, make_batch(tok, rows, tokenizer.pad_token_id, task.name, device), layer)
        averager.add(hidden.float().cpu(), [tok.words[i] for i in rows])
    return averager.result()


def smart_delta(model: MultiTaskModel, reg: Smart, batch: dict, task: TaskDef, seed: int) -> torch.Tensor:
    """SMART's delta (B, T, H) at the embedding output for ``batch``, as its regularizer computes it:
    N(0, 1) * noise_var (zero on padding), then k ascent steps on the adversarial objective."""
    o = reg.options
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    with torch.no_grad():
        clean = model(batch)
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch["input_ids"].shape, model.encoder.config.hidden_size)
    delta = (torch.randn(shape, generator=gen) * o.noise_var).to(mask.device) * mask
    for _ in range(o.k):
        delta.requires_grad_(True)
        current = delta
        with model.perturb(0, lambda h: h + current.to(h.dtype)):
            noisy = model(batch)
        inner = losses.adversarial_objective(task.reg_loss, clean, noisy)
        (grad,) = torch.autograd.grad(inner, delta)
        delta = delta.detach()
        if not torch.isfinite(grad.norm()):
            logger.warning("smart: non-finite gradient for the example; its delta stays the initial noise")
            break
        delta = reg.ascend(delta, grad) * mask
    return delta.detach()


def rapt_delta(reg: Rapt, hidden: torch.Tensor, attention_mask: torch.Tensor, seed: int) -> torch.Tensor:
    """RAPT's noise (B, T, H) for ``hidden``: drawn on the CPU from ``seed`` (same on every device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        delta = reg.noise(hidden.detach().float().cpu(), attention_mask.cpu())
    return delta.to(hidden.device, hidden.dtype)
