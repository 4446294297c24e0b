"""The peer's baseline: plain ``transformers.Trainer`` on the same encoder, data, recipe and seed as a campaign row.

    python -m experiments.rapt.peer --task rte --seed 1 --root runs/robustness [--epochs 3 --lr 1e-4]

What a user would run instead of this project: ``AutoModelForSequenceClassification`` (the encoder's [CLS]
token through its pooler, a fresh linear head), ``transformers.Trainer`` with its own AdamW, linear warm-up and
decay, dynamic padding, and the campaign's recipe (3 epochs, lr 1e-4, batch 32, weight decay 0.01, warm-up 10%,
clipping 1.0, max_seq_len 128, SST-2 on the same seeded 8,000 training rows). The dev split and the task's
robustness sets (AdvGLUE) are scored after every epoch through the Trainer's own ``eval_dataset`` dict.

The run is written as a campaign run folder, ``ROOT/<task>/standard_hf/s<seed>-peer`` (``config.json``,
``metrics.jsonl`` with one dev record per epoch and a final train record), so ``campaign --report`` shows it as
the row "standard, transformers.Trainer" beside ours.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data_utils import atomic
from data_utils.batching import seeded_subset
from data_utils.glue import read_split
from data_utils.metrics import compute_metrics
from data_utils.robustness import load_sets, robustness_dir
from data_utils.task_def import ConfigError, load_task_defs
from experiments.hf_trainer import load_classifier, tokenized
from experiments.rapt.results import load_result
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.model import resolve_model

logger = logging.getLogger(__name__)

METHOD = "standard_hf"  # the row's name in reports
SUBSAMPLE = {"sst": 8000}  # as the campaign grids train SST-2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.peer", description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--root", required=True, help="campaign root: the run goes to ROOT/<task>/standard_hf/s<seed>-peer")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "glue_data"))
    p.add_argument("--robustness_dir", default=None, help="as mt_dnn.train's")
    p.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--overwrite", action="store_true",
                   help="train again in a run folder that holds a run (the peer keeps no checkpoint: a run cut "
                        "off before its end starts over)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        raise ConfigError("--epochs must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = load_task_defs()
    if args.task not in tasks:
        raise ConfigError(f"unknown task {args.task!r}; choose one of {', '.join(tasks)}")
    task = tasks[args.task]
    out = Path(args.root) / task.name / METHOD / f"s{args.seed}-peer"
    if (out / "metrics.jsonl").exists():
        if not args.overwrite:
            state = "a finished run" if load_result(out).finished else "an unfinished run (cut off before its end)"
            raise ConfigError(f"{out}: holds {state}; --overwrite trains it again")
        shutil.rmtree(out)
    setup_logging()
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    model_path = resolve_model(args.model)
    tokenizer, model = load_classifier(model_path, task, args.seed, args.max_seq_len)
    train_ex = read_split(args.glue_dir, task, task.splits_of("train")[0])
    if task.name in SUBSAMPLE:  # the campaign's seeded rows (mt_dnn.train --max_train_samples)
        train_ex = [train_ex[i] for i in seeded_subset(len(train_ex), SUBSAMPLE[task.name], args.seed)]
    dev_split = task.splits_of("dev")[0]
    evals = {"dev": tokenized(tokenizer, task, read_split(args.glue_dir, task, dev_split), args.max_seq_len)}
    for rs in load_sets(task, robustness_dir(args.robustness_dir, args.glue_dir)):
        if rs.dev_split == dev_split.name:
            evals[rs.set_name] = tokenized(tokenizer, task, rs.examples, args.max_seq_len)
    regression = task.type == "regression"

    def metrics(pred) -> dict[str, float]:
        logits = np.asarray(pred.predictions)
        guesses = logits.reshape(len(logits), -1)[:, 0] if regression else logits.argmax(-1)
        return compute_metrics(task.metrics, guesses, np.asarray(pred.label_ids))

    targs = TrainingArguments(
        output_dir=str(out / "trainer"), report_to="none", seed=args.seed, num_train_epochs=args.epochs,
        learning_rate=args.lr, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
        warmup_steps=0.1,  # a float below 1: a fraction of the steps
        weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear",
        eval_strategy="epoch", save_strategy="no", logging_strategy="epoch", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())  # pinning needs a GPU
    trainer = Trainer(model=model, args=targs, train_dataset=tokenized(tokenizer, task, train_ex, args.max_seq_len),
                      eval_dataset=evals, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=metrics)
    out.mkdir(parents=True, exist_ok=True)
    config = {"tasks": task.name, "method": METHOD, "tool": "transformers.Trainer", "seed": args.seed,
              "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
              "max_train_samples": SUBSAMPLE.get(task.name), "resolved_model": model_path, "pooling": "cls (pooler)",
              "method_options": {}, "resolved_device": "cpu" if not torch.cuda.is_available() else "cuda",
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    atomic.write_text(out / "config.json", json.dumps(config, indent=2))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps_per_epoch = trainer.state.max_steps / args.epochs
    by_epoch: dict[int, dict] = {}
    for h in trainer.state.log_history:
        for name in evals:
            if f"eval_{name}_loss" in h:
                ep = round(h["epoch"]) - 1
                by_epoch.setdefault(ep, {"step": h["step"]})[name] = {m: h[f"eval_{name}_{m}"] for m in task.metrics}
    lines = []
    for ep in sorted(by_epoch):
        rec = by_epoch[ep]
        record = {"epoch": ep, "step": rec["step"], "task": task.name, "split": "dev", "split_name": dev_split.name,
                  "method": METHOD, "seed": args.seed,
                  "train_seconds": round(seconds * rec["step"] / trainer.state.max_steps, 3), "metrics": rec["dev"]}
        robust = {n: rec[n] for n in evals if n != "dev" and n in rec}
        if robust:
            record["robustness"] = robust
        lines.append(json.dumps(record))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    lines.append(json.dumps({"epoch": args.epochs - 1, "step": trainer.state.global_step, "split": "train",
                             "method": METHOD, "seed": args.seed, "train_seconds": round(seconds, 3),
                             "steps": trainer.state.global_step, "loss": losses[-1] if losses else None,
                             "reg_loss": 0.0, "steps_per_epoch": steps_per_epoch}))
    atomic.write_text(out / "metrics.jsonl", "\n".join(lines) + "\n")
    for line in lines[:-1]:
        logger.info("%s", line)
    print(f"{task.name} seed {args.seed}: {len(lines) - 1} evaluations, {seconds:.0f} s; run folder {out}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
