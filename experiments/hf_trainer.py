"""Fine-tune any Hugging Face sequence classifier on one GLUE task with ``transformers.Trainer`` and a regularizer.

    python -m experiments.hf_trainer --task rte --method rapt [--model NAME_OR_PATH] [--epochs 3 --lr 1e-4
        --batch_size 32 --seed 1 --output_dir runs/hf-rte-rapt] [--rapt_eta 2 --rapt_max_layer 3 ...]

The task's official files are read by ``data_utils.glue`` (``--glue_dir``, default ``$GLUE_DIR``, else
``../shared/glue_data``), tokenized with the model's own tokenizer and padded per batch; the model is
``AutoModelForSequenceClassification`` (default: the packaged all-MiniLM-L6-v2, with a fresh classifier head)
trained by ``mt_dnn.hf.RegularizedTrainer``. The dev split is scored after every epoch.

Outputs (``--output_dir``): ``model/`` (weights, config with id2label, tokenizer: loadable by
``transformers.pipeline("text-classification", model=...)``), ``summary.json`` (dev metrics per epoch, train
seconds, median optimizer-step time, the Trainer's log history), ``step_times.tsv`` (each optimizer step's
seconds, written as training goes) and ``train.log``. A folder holding them from an earlier run is refused unless
``--overwrite``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_utils import atomic
from data_utils.batching import seeded_subset
from data_utils.encoder_limits import check_encoder_fits, check_tokenizer
from data_utils.glue import read_split
from data_utils.metrics import compute_metrics
from data_utils.robustness import load_sets, robustness_dir
from data_utils.task_def import ConfigError, TaskDef, load_task_defs
from mt_dnn.cli_utils import close_log_files, run_cli, setup_logging
from mt_dnn.config import TrainConfig, resolve_lr
from mt_dnn.flags import Flag, add_flags, given
from mt_dnn.model import cannot_load, resolve_model
from mt_dnn.perturbation import REGISTRY
from mt_dnn.runtime import set_threads
from mt_dnn.train import method_options, train_flags

logger = logging.getLogger(__name__)

OUTPUTS = ("model", "summary.json", "step_times.tsv", "train.log", "trainer")  # what a run writes in its folder


def default_glue_dir() -> str:
    return os.environ.get("GLUE_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "glue_data"))


# the flags shared with mt_dnn.train, from the same declarations; here --method defaults to rapt, --log_every to 20
SHARED = ("model", "method", "epochs", "lr", "batch_size", "eval_batch_size", "grad_accumulation_steps",
          "max_seq_len", "warmup", "weight_decay", "max_train_samples", "max_eval_samples", "max_steps", "precision",
          "seed", "log_every", "threads")
DEFAULTS = {"method": "rapt", "log_every": 20}


def shared_flags() -> list[Flag]:
    return [replace(f, default=DEFAULTS.get(f.key, f.default)) for f in train_flags() if f.key in SHARED or f.method]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.hf_trainer",
                                description="One GLUE task with transformers.Trainer and a regularizer "
                                            f"({', '.join(REGISTRY)}).", allow_abbrev=False)
    p.add_argument("--task", default="rte", help="a task of data_utils/glue_tasks.yml (default: rte)")
    p.add_argument("--glue_dir", default=None, help="GLUE folder (default: $GLUE_DIR, else ../shared/glue_data)")
    p.add_argument("--robustness_dir", default=None,
                   help="folder of the task's robustness sets (AdvGLUE's dev.json), scored beside dev at every "
                        "evaluation (default: $ROBUSTNESS_DIR, else an advglue folder beside the GLUE folder)")
    p.add_argument("--output_dir", default=None, help="default: runs/hf-<task>-<method>-s<seed>")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --output_dir (without it, a folder holding one is refused)")
    add_flags(p, shared_flags())
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The flags (a typed value checked against its declaration, the others at their defaults; --lr resolved as
    mt_dnn.train resolves it) and --method's options by field name."""
    args = build_parser().parse_args(argv)
    flags = shared_flags()
    typed = given(args, flags)
    values = {**{f.key: f.default for f in flags if not f.method}, **typed}
    options = method_options(typed, values["method"])
    if values["epochs"] < 1 and not values["max_steps"]:
        raise ConfigError("--epochs must be >= 1 (or give --max_steps)")
    if values["lr"] is None:
        values["lr"] = resolve_lr(TrainConfig(model=values["model"]))[0]
    return argparse.Namespace(task=args.task, glue_dir=args.glue_dir, output_dir=args.output_dir,
                              robustness_dir=args.robustness_dir, overwrite=args.overwrite, **values), options


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def tokenized(tokenizer, task: TaskDef, examples, max_len: int) -> _Rows:
    """Token ids of each example (pairs as the tokenizer joins them), with its label: a list of dicts."""
    enc = tokenizer([e.text_a for e in examples], [e.text_b for e in examples] if task.text_b else None,
                    truncation=True, max_length=max_len)
    rows = []
    for i, e in enumerate(examples):
        row = {k: enc[k][i] for k in enc.keys()}
        row["labels"] = float(e.label) if task.type == "regression" else int(e.label)
        rows.append(row)
    return _Rows(rows)


def load_classifier(model_path: str, task: TaskDef, seed: int, max_seq_len: int):
    """``(tokenizer, model)``: the fast tokenizer and a fresh ``AutoModelForSequenceClassification`` for ``task``
    (num_labels, id2label and problem type from the task definition) from ``model_path``, the new head initialised
    from ``seed``. Checked as ``mt_dnn.train`` checks an encoder: a folder that cannot be loaded, tokenizer files
    that are not the encoder's, or a ``max_seq_len`` longer than its positions is a one-line ConfigError."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    regression = task.type == "regression"
    labels = list(task.labels or ["score"])
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
        torch.manual_seed(seed)  # the fresh head's initialisation
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, dtype=torch.float32, num_labels=1 if regression else len(labels),
            id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
            problem_type="regression" if regression else "single_label_classification")
    except OSError as exc:
        raise cannot_load(model_path, exc) from None
    check_tokenizer(tokenizer, model.config, f"encoder {model_path}")
    check_encoder_fits(model.config, tokenizer, [task], max_seq_len, model_path)
    return tokenizer, model


def main(argv: list[str] | None = None) -> int:
    try:
        return _train(argv)
    finally:
        close_log_files()


def _train(argv: list[str] | None) -> int:
    args, options = parse_args(argv)
    set_threads(args.threads)
    tasks = load_task_defs()
    if args.task not in tasks:
        raise ConfigError(f"unknown task {args.task!r}; choose one of {', '.join(tasks)}")
    task = tasks[args.task]
    if task.type not in ("classification", "regression") or not task.splits_of("dev"):
        raise ConfigError(f"task {task.name} has no labelled dev split to train and score on")
    glue_dir = args.glue_dir or default_glue_dir()
    out = Path(args.output_dir or f"runs/hf-{task.name}-{args.method}-s{args.seed}")
    held = [name for name in OUTPUTS if (out / name).exists()]
    if held and not args.overwrite:
        raise ConfigError(f"{out} holds another run ({', '.join(held)}): pass --overwrite to replace it, or "
                          "another --output_dir")
    setup_logging()  # the console only: the run folder is made once data, model and trainer are set up

    from transformers import DataCollatorWithPadding, TrainingArguments

    from mt_dnn.hf import LastStep, RegularizedTrainer, StepTimer

    train_ex = read_split(glue_dir, task, task.splits_of("train")[0])
    if args.max_train_samples:  # the same seeded rows as mt_dnn.train --max_train_samples
        train_ex = [train_ex[i] for i in seeded_subset(len(train_ex), args.max_train_samples, args.seed)]
    dev_split = task.splits_of("dev")[0]
    dev_ex = read_split(glue_dir, task, dev_split)[:args.max_eval_samples]  # as mt_dnn.train: the first N rows
    model_path = resolve_model(args.model)
    tokenizer, model = load_classifier(model_path, task, args.seed, args.max_seq_len)
    regression = task.type == "regression"
    train_ds = tokenized(tokenizer, task, train_ex, args.max_seq_len)
    dev_ds = tokenized(tokenizer, task, dev_ex, args.max_seq_len)
    # the Trainer scores every dataset of this dict at each evaluation: dev, and the robustness sets beside it
    evals = {"dev": dev_ds}
    for rs in load_sets(task, robustness_dir(args.robustness_dir, glue_dir)):
        if rs.dev_split == dev_split.name:
            evals[rs.set_name] = tokenized(tokenizer, task, rs.examples[:args.max_eval_samples], args.max_seq_len)

    def metrics(pred) -> dict[str, float]:
        logits = np.asarray(pred.predictions)
        guesses = logits.reshape(len(logits), -1)[:, 0] if regression else logits.argmax(-1)
        return compute_metrics(task.metrics, guesses, np.asarray(pred.label_ids))

    by_steps = args.max_steps is not None  # a --max_steps run is scored once, at its end; else after every epoch
    targs = TrainingArguments(
        output_dir=str(out / "trainer"), report_to="none", push_to_hub=False, seed=args.seed,
        num_train_epochs=args.epochs, max_steps=args.max_steps or -1, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.grad_accumulation_steps, warmup_steps=args.warmup,  # below 1: a fraction
        weight_decay=args.weight_decay, max_grad_norm=1.0, lr_scheduler_type="linear",
        eval_strategy="no" if by_steps else "epoch", save_strategy="no", logging_strategy="steps",
        logging_steps=args.log_every,
        bf16=args.precision == "bf16", fp16=args.precision == "fp16", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())
    timer = StepTimer(str(out / "step_times.tsv"))
    trainer = RegularizedTrainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=evals,
                                 processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                                 compute_metrics=metrics, callbacks=[timer, LastStep(evaluate=by_steps)],
                                 method=args.method, method_options=options, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in held:  # --overwrite: the run being replaced goes first, so nothing of it mixes with this one
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    setup_logging(out / "train.log")
    logger.info("%s on %s: %d train / %d dev rows, method %s %s", model_path, task.name, len(train_ds),
                len(dev_ds), args.method, options)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    trainer.save_model(str(out / "model"))
    dev = [{"epoch": round(h["epoch"], 3), "step": h["step"],
            **{m: h[f"eval_dev_{m}"] for m in task.metrics}, "loss": h["eval_dev_loss"]}
           for h in trainer.state.log_history if "eval_dev_loss" in h]
    for row in dev:  # the robustness sets' scores logged at the same step
        robust = {name: {m: h[f"eval_{name}_{m}"] for m in task.metrics} for name in evals if name != "dev"
                  for h in trainer.state.log_history if h.get("step") == row["step"] and f"eval_{name}_loss" in h}
        if robust:
            row["robustness"] = robust
    # the options the regularizer ran with (defaults included, as mt_dnn.train's config.json), and the epochs
    # the run went through (a --max_steps run stops inside its first ones)
    summary = {"task": task.name, "method": args.method,
               "method_options": dataclasses.asdict(trainer.regularizer.options), "seed": args.seed,
               "model": model_path, "epochs": args.epochs, "epochs_trained": round(float(trainer.state.epoch or 0), 3),
               "max_steps": args.max_steps, "lr": args.lr, "batch_size": args.batch_size,
               "max_seq_len": args.max_seq_len, "precision": args.precision,
               "threads": torch.get_num_threads(), "steps": trainer.state.global_step,
               "train_seconds": round(train_seconds, 2),
               "median_step_seconds": timer.median(), "step_seconds": [round(t, 4) for t in timer.times],
               "dev": dev, "log_history": trainer.state.log_history}
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=2))
    if (out / "trainer").is_dir() and not any((out / "trainer").iterdir()):
        (out / "trainer").rmdir()  # the Trainer's scratch folder: nothing is saved there (save_strategy "no")
    for row in dev:
        logger.info("dev epoch %s: %s", row["epoch"], {m: round(row[m], 4) for m in task.metrics})
    logger.info("train %.1f s, median step %.3f s; model in %s", train_seconds, timer.median() or 0.0,
                out / "model")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
