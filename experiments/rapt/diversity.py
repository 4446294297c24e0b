"""RAPT paper, Section 4 (Tables 4, 5, 6): nearest word types to a word's vector, before and after the noise.

    python -m experiments.rapt.diversity --standard RUN --smart RUN --rapt RUN --glue_dir $GLUE_DIR \
        [--task rte] [--words country,can] [--rapt_layer 2] [--top 10] [--max_train_rows N] \
        [--out experiments/rapt/results/diversity.md]

For each trained run, every word type of the task's training set gets an in-context vector: each training
row goes through the model (eval mode, no grad, batches of similar length), the hidden state at the chosen
layer is taken for every token, word pieces are mapped back to words with the fast tokenizer's
``word_ids()`` (a word = mean of its pieces; special tokens and words without a letter are skipped), and
the word vectors are averaged per lower-cased word type. The layer is 0 (embedding output) for Standard
and SMART and ``--rapt_layer`` for RAPT.

The paper's RTE "dev" example ("... mexico produces more oil than any other country .") is found by a
case-insensitive substring of its second sentence (``--example``), in the dev file and then in the train file
(``--example_split``): in the official GLUE RTE files that row is train.tsv line 626. For each target word in it, its vector
before the noise and after adding the method's noise -- SMART: the adversarial delta its regularizer
computes at the embedding output for this input; RAPT: N(0, 1) scaled to inf-norm eta at the RAPT layer,
seeded -- is compared by cosine similarity with every training word type (the target itself excluded).

Table 4 lists Standard (no noise), SMART (+noise) and RAPT (+noise) side by side, as in the paper, whose
Table 4 columns are the (+noise) columns of its Table 5. Tables 5, 6, ... give, per target word,
SMART, SMART (+noise), RAPT, RAPT (+noise) with similarities.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from data_utils.glue import DataError, Example, read_split, split_path
from data_utils.task_def import ConfigError, TaskDef
from mt_dnn import losses
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.model import MultiTaskModel, find_model_dir, load_model
from mt_dnn.perturbation import Rapt, Smart, build_regularizer
from mt_dnn.trainer import pick_device

logger = logging.getLogger(__name__)

PAPER_EXAMPLE = "mexico produces more oil than any other country"
PROG = "python -m experiments.rapt.diversity"

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


# ---- runs, data and the analysis ----------------------------------------------------------------------------

def run_options(path: str, method: str) -> dict:
    """The method options a run was trained with (its ``config.json``); {} (defaults) if none or another method."""
    d = Path(path)
    for cfg in (d / "config.json", d.parent / "config.json"):
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            if data.get("method") != method:
                logger.warning("%s was trained with --method %s, not %s; using %s's default options",
                               path, data.get("method"), method, method)
                return {}
            return dict(data.get("method_options") or {})
    logger.warning("%s: no config.json found; using %s's default options", path, method)
    return {}


def locate_example(glue_dir: str, task: TaskDef, substring: str, split: str) -> tuple[Example, str]:
    """The example row and the file it came from. ``split`` auto = dev first, then train: the paper calls its
    example an RTE dev example, but in the official GLUE files that row (line 626) is in RTE's train.tsv."""
    kinds = ["dev", "train"] if split == "auto" else [split]
    errors = []
    for kind in kinds:
        sd = task.splits_of(kind)[0]
        path = str(split_path(glue_dir, task, sd))
        try:
            example = find_example(read_split(glue_dir, task, sd), substring, path)
        except DataError as exc:
            errors.append(exc)
            continue
        if kind != kinds[0]:
            logger.warning("the example is not in %s's dev file; found in %s line %d", task.name, path,
                           example.line)
        return example, Path(path).name
    if len(errors) == 1:
        raise errors[0]
    raise DataError(f"{task.name}: no dev or train row's sentence contains {substring!r}; "
                    f"pass --example with a substring of the row to use")


def find_example(examples: list[Example], substring: str, where: str) -> Example:
    """The first row whose second sentence (or only sentence) contains ``substring``, case-insensitively."""
    needle = substring.lower()
    for e in examples:
        if needle in (e.text_b if e.text_b is not None else e.text_a).lower():
            return e
    raise DataError(f"{where}: no row's sentence contains {substring!r} (the paper's example); "
                    f"pass --example with a substring of the row to use")


@dataclass
class Method:
    """One trained run: its model and tokenizer, the layer it is read at and its noise settings."""

    name: str
    run: str
    model: MultiTaskModel
    tokenizer: object
    layer: int
    reg: Smart | Rapt | None = None
    vocab: list[str] = field(default_factory=list)
    matrix: torch.Tensor | None = None  # (V, H) word-type vectors


@dataclass
class WordResult:
    """Top lists for one target word: keys standard, smart, smart_noise, rapt, rapt_noise."""

    word: str
    input_tokens: list[str]
    tops: dict[str, list[tuple[str, float]]]
    noise: dict[str, str]  # method -> a note on the noise size


def analyse_word(methods: dict[str, Method], task: TaskDef, example: Example, word: str, top: int, seed: int,
                 max_len: int, device: torch.device) -> WordResult:
    """The target word's neighbours for every method, before and (SMART, RAPT) after the noise."""
    tops: dict[str, list[tuple[str, float]]] = {}
    noise: dict[str, str] = {}
    tokens: list[str] = []
    for name, m in methods.items():
        tok = tokenize(m.tokenizer, task, [example], max_len)
        positions = next((pos for w, pos in tok.words[0] if w == word), None)
        if positions is None:
            raise ConfigError(f"word {word!r} is not in the example; its words: "
                              f"{' '.join(w for w, _ in tok.words[0])}")
        tokens = m.tokenizer.convert_ids_to_tokens(tok.input_ids[0].tolist())
        batch = make_batch(tok, [0], m.tokenizer.pad_token_id, task.name, device)
        hidden = hidden_at(m.model, batch, m.layer)[0]  # (T, H)
        clean = word_vector(hidden, positions)
        tops[name] = top_similar(clean.cpu(), m.vocab, m.matrix, word, top)
        if m.reg is None:
            continue
        if isinstance(m.reg, Smart):
            delta = smart_delta(m.model, m.reg, batch, task, seed)[0]
        else:
            delta = rapt_delta(m.reg, hidden.unsqueeze(0), batch["attention_mask"], seed)[0]
        noisy = word_vector(hidden + delta, positions)
        tops[f"{name}_noise"] = top_similar(noisy.cpu(), m.vocab, m.matrix, word, top)
        ratio = float(word_vector(delta, positions).norm() / clean.norm().clamp_min(1e-12))
        noise[name] = (f"layer {m.layer}: inf-norm of the delta over the input {float(delta.abs().max()):.4g}; "
                       f"for *{word}*, ||delta|| / ||h|| = {ratio:.4g}")
    return WordResult(word, tokens, tops, noise)


# ---- Markdown -----------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table4(res: WordResult, top: int) -> list[str]:
    """Standard vs SMART (+noise) vs RAPT (+noise); bold = not in Standard's list; a row of overlap counts."""
    cols = [("Standard", res.tops["standard"]), ("SMART", res.tops["smart_noise"]),
            ("RAPT", res.tops["rapt_noise"])]
    standard = {w for w, _ in res.tops["standard"]}
    lines = ["| rank | " + " | ".join(name for name, _ in cols) + " |", "|---:|" + "---|" * len(cols)]
    for i in range(top):
        cells = []
        for name, items in cols:
            if i >= len(items):
                cells.append("")
                continue
            w = _cell(items[i][0])
            cells.append(w if name == "Standard" or items[i][0] in standard else f"**{w}**")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    shared = [sum(w in standard for w, _ in items) for _, items in cols]
    lines.append("| shared with Standard | " + " | ".join(f"{s}/{len(items)}" for s, (_, items)
                                                           in zip(shared, cols)) + " |")
    return lines


def table_noise(res: WordResult, top: int) -> list[str]:
    """SMART, SMART (+noise), RAPT, RAPT (+noise): word and cosine similarity columns."""
    cols = [("SMART", "smart"), ("SMART (+noise)", "smart_noise"), ("RAPT", "rapt"), ("RAPT (+noise)", "rapt_noise")]
    lines = ["| " + " | ".join(f"{title} word | similarity" for title, _ in cols) + " |",
             "|" + "---|---:|" * len(cols)]
    for i in range(top):
        cells = []
        for _, key in cols:
            items = res.tops[key]
            cells += [_cell(items[i][0]), f"{items[i][1]:.4f}"] if i < len(items) else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(command: str, header: list[str], results: list[WordResult], top: int, rapt_layer: int) -> str:
    """The whole report: command, settings, Table 4 for the first word, then one noise table per word."""
    first = results[0]
    out = ["# RAPT Section 4: diversity of the representations (paper Tables 4, 5, 6)", "",
           f"Command: `{command}`", "", *header, "",
           f"Input: `{' '.join(first.input_tokens)}`", "",
           f"## Table 4: top-{top} closest words to **{first.word}**", "",
           "Standard: embedding output, no noise. SMART: embedding output plus SMART's computed perturbation. "
           f"RAPT: layer-{rapt_layer} states plus "
           "RAPT's noise (the paper's Table 4 columns are the (+noise) columns of its Table 5). "
           "**Bold**: not among Standard's words.", "",
           *table4(first, top), ""]
    for n, res in enumerate(results, start=5):
        out += [f"## Table {n}: top-{top} closest words to **{res.word}**, before and after the noise", "",
                "Cosine similarity between the target word's vector and the training set's word-type vectors "
                "at the same layer.", "",
                *table_noise(res, top), "",
                *(f"- {name.upper()} noise, {note}" for name, note in res.noise.items()), ""]
    return "\n".join(out)


# ---- CLI ----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--standard", required=True, help="standard fine-tuning run (RUN or RUN/best)")
    p.add_argument("--smart", required=True, help="SMART run")
    p.add_argument("--rapt", required=True, help="RAPT run")
    p.add_argument("--glue_dir", required=True, help="folder with the GLUE task folders")
    p.add_argument("--task", default="rte")
    p.add_argument("--words", default="country,can", help="comma-separated target words of the example")
    p.add_argument("--example", default=PAPER_EXAMPLE,
                   help="case-insensitive substring of the row's second sentence (default: the paper's)")
    p.add_argument("--example_split", choices=["auto", "dev", "train"], default="auto",
                   help="where to look for the example; auto: dev, then train (the paper's 'dev' example is "
                        "in the official RTE train.tsv)")
    p.add_argument("--rapt_layer", type=int, default=2, help="RAPT's layer (0 = embedding output)")
    p.add_argument("--rapt_eta", type=float, default=None, help="default: the RAPT run's eta")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--max_train_rows", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--max_seq_len", type=int, default=512, help="truncate inputs (capped by the encoder)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1, help="seed of SMART's initial noise and RAPT's noise")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--out", default="experiments/rapt/results/diversity.md")
    return p


def load_method(name: str, run: str, layer: int, device: torch.device, options: dict | None) -> Method:
    model, tokenizer, _ = load_model(find_model_dir(run))
    model.to(device).eval()
    model.check_layer(layer)
    reg = build_regularizer(name, options) if options is not None else None
    return Method(name, run, model, tokenizer, layer, reg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    words = [w.strip().lower() for w in args.words.split(",") if w.strip()]
    if not words:
        raise ConfigError("--words is empty")
    if args.top < 1:
        raise ConfigError("--top must be >= 1")
    if args.max_train_rows is not None and args.max_train_rows < 1:
        raise ConfigError("--max_train_rows must be >= 1")
    device = pick_device(args.device)
    for run in (args.standard, args.smart, args.rapt):
        find_model_dir(run)  # a missing run fails here, before anything else
    smart_opts = run_options(args.smart, "smart")
    rapt_opts = {k: v for k, v in run_options(args.rapt, "rapt").items() if k in ("eta", "norm")}
    if args.rapt_eta is not None:
        rapt_opts["eta"] = args.rapt_eta
    methods = {"standard": load_method("standard", args.standard, 0, device, None),
               "smart": load_method("smart", args.smart, 0, device, smart_opts),
               "rapt": load_method("rapt", args.rapt, args.rapt_layer, device, rapt_opts)}
    if args.task not in methods["smart"].model.task_defs:
        raise ConfigError(f"the SMART run {args.smart} has no task {args.task!r} "
                          f"(it has {', '.join(methods['smart'].model.task_defs)})")
    task = methods["smart"].model.task_defs[args.task]
    train = read_split(args.glue_dir, task, task.splits_of("train")[0])
    if args.max_train_rows is not None:
        train = train[:args.max_train_rows]
    example, where = locate_example(args.glue_dir, task, args.example, args.example_split)
    logger.info("example (%s line %d): %s || %s", where, example.line, example.text_a, example.text_b)
    for m in methods.values():
        max_len = min(args.max_seq_len, m.model.encoder.config.max_position_embeddings)
        logger.info("%s: word-type vectors at layer %d over %d training rows", m.name, m.layer, len(train))
        m.vocab, m.matrix = word_type_vectors(m.model, m.tokenizer, task, train, m.layer, args.batch_size,
                                              max_len, device)
    max_len = min(args.max_seq_len, *(m.model.encoder.config.max_position_embeddings for m in methods.values()))
    results = [analyse_word(methods, task, example, w, args.top, args.seed, max_len, device) for w in words]
    rapt = methods["rapt"].reg.options
    header = [f"- Runs: standard `{args.standard}`, SMART `{args.smart}`, RAPT `{args.rapt}`",
              f"- Task {task.name}: {len(train)} training rows, {len(methods['standard'].vocab)} word types "
              f"(standard run); the example is line {example.line} of `{where}`",
              f"- Layers: Standard and SMART 0 (embedding output), RAPT {args.rapt_layer}; "
              f"RAPT eta {rapt.eta} ({rapt.norm} norm); SMART {vars(methods['smart'].reg.options)}; "
              f"noise seed {args.seed}"]
    command = PROG + " " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = render(command, header, results, args.top, args.rapt_layer)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    print(text)
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
