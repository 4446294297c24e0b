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

The vectors, the neighbours and the noise are computed in :mod:`experiments.rapt.word_vectors`; this module
finds the runs and the example, and writes the report.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_utils import atomic
from data_utils.glue import DataError, Example, read_split, split_path
from data_utils.task_def import ConfigError, TaskDef
from experiments.rapt.word_vectors import (hidden_at, make_batch, rapt_delta, smart_delta, tokenize, top_similar,
                                           word_type_vectors, word_vector)
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.model import MultiTaskModel, find_model_dir, load_model
from mt_dnn.perturbation import Rapt, Smart, build_regularizer
from mt_dnn.trainer import pick_device

logger = logging.getLogger(__name__)

PAPER_EXAMPLE = "mexico produces more oil than any other country"
PROG = "python -m experiments.rapt.diversity"


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
    atomic.write_text(out, text + "\n")
    print(text)
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
