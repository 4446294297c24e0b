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

Every ``--save_every_steps`` steps the Trainer saves a checkpoint (weights, optimizer, schedule, RNG states and
its log, under ``trainer/``), and at each epoch's end after that epoch's evaluation; running the same command again
resumes a cut-off run from its newest complete checkpoint, and refuses one whose recipe, encoder, data files or
device differ from the run's. The checkpoints are removed when the run ends. ``train_seconds`` counts the training
steps only (evaluations and checkpoint saves left out, as ``mt_dnn.train`` counts them), across a cut.
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
from typing import Any

import numpy as np
import torch

from data_utils import atomic
from data_utils.batching import seeded_subset
from data_utils.features import data_fingerprint
from data_utils.glue import read_split
from data_utils.metrics import compute_metrics
from data_utils.robustness import load_sets, robustness_dir, set_digests
from data_utils.task_def import ConfigError, load_task_defs
from experiments.hf_trainer import load_classifier, tokenized
from experiments.rapt.results import load_result
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.model import resolve_model
from mt_dnn.run_folder import model_digest

logger = logging.getLogger(__name__)

METHOD = "standard_hf"  # the row's name in reports
SUBSAMPLE = {"sst": 8000}  # as the campaign grids train SST-2
ELAPSED = "elapsed.json"  # in each checkpoint folder: training seconds up to it, written once the checkpoint is whole
# what a resumed run must share with the run that wrote its checkpoints (config.json's keys; the Trainer keeps
# saving as often as its checkpoint says, and the run's clock is one device's)
RECIPE = ("tasks", "method", "tool", "seed", "epochs", "lr", "batch_size", "max_seq_len", "max_train_samples",
          "resolved_model", "model_files", "pooling", "save_every_steps", "data", "resolved_device")


def last_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest checkpoint folder (``checkpoint-<step>``) under ``trainer_dir`` that is whole: one whose
    :data:`ELAPSED` file was written after the Trainer had saved everything in it. None where there is none."""
    whole = [d for d in trainer_dir.glob("checkpoint-*")
             if d.name.split("-")[-1].isdigit() and (d / ELAPSED).is_file()]
    return max(whole, key=lambda d: int(d.name.split("-")[-1])) if whole else None


def resume_point(out: Path, config: dict[str, Any]) -> Path | None:
    """The checkpoint a run in ``out`` resumes from: the newest whole one, where ``out`` holds a config.json whose
    recipe is ``config``'s; None where there is nothing to resume. A recipe that differs is a ConfigError."""
    resume = last_checkpoint(out / "trainer") if (out / "config.json").is_file() else None
    if resume is not None:
        change = recipe_change(json.loads((out / "config.json").read_text()), config)
        if change:
            raise ConfigError(f"{out}: holds a run cut off at {resume.name} with another recipe ({change}); "
                              "--overwrite trains it again from the start")
    return resume


def recipe_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """'key saved -> now, ...' for the recipe keys that differ between a run folder's config and this run's;
    None when they agree."""
    changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in RECIPE if saved.get(k) != now.get(k)]
    return ", ".join(changed) or None


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
    p.add_argument("--save_every_steps", type=int, default=50,
                   help="save a checkpoint every N optimizer steps (the Trainer's own; 0: none, so a run cut off "
                        "before its end starts over); the same command resumes from the newest one")
    p.add_argument("--overwrite", action="store_true",
                   help="train again from the start in a run folder that holds a run, finished or cut off")
    args = p.parse_args(argv)
    if args.epochs < 1:
        raise ConfigError("--epochs must be >= 1")
    if args.save_every_steps < 0:
        raise ConfigError("--save_every_steps must be >= 0")
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
    elif args.overwrite and out.exists():
        shutil.rmtree(out)
    setup_logging()
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    model_path = resolve_model(args.model)
    train_split, dev_split = task.splits_of("train")[0], task.splits_of("dev")[0]
    rdir = robustness_dir(args.robustness_dir, args.glue_dir)
    config = {"tasks": task.name, "method": METHOD, "tool": "transformers.Trainer", "seed": args.seed,
              "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
              "max_train_samples": SUBSAMPLE.get(task.name), "resolved_model": model_path, "pooling": "cls (pooler)",
              "model_files": model_digest(model_path), "save_every_steps": args.save_every_steps,
              # the files it reads, as mt_dnn.train records them for its own --resume
              "data": {**data_fingerprint(args.glue_dir, [task], with_dev=True), **set_digests([task], rdir)},
              "method_options": {}, "resolved_device": "cpu" if not torch.cuda.is_available() else "cuda",
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    trainer_dir = out / "trainer"
    resume, clock = resume_point(out, config), {"steps": 0.0}  # seconds of training steps, before a cut too
    if resume is not None:
        clock["steps"] = json.loads((resume / ELAPSED).read_text())["seconds"]
        logger.info("resuming %s from %s (%.0f s of training before it)", out, resume.name, clock["steps"])
    else:
        shutil.rmtree(trainer_dir, ignore_errors=True)  # a run cut off before its first whole checkpoint

    tokenizer, model = load_classifier(model_path, task, args.seed, args.max_seq_len)
    train_ex = read_split(args.glue_dir, task, train_split)
    if task.name in SUBSAMPLE:  # the campaign's seeded rows (mt_dnn.train --max_train_samples)
        train_ex = [train_ex[i] for i in seeded_subset(len(train_ex), SUBSAMPLE[task.name], args.seed)]
    evals = {"dev": tokenized(tokenizer, task, read_split(args.glue_dir, task, dev_split), args.max_seq_len)}
    for rs in load_sets(task, rdir):
        if rs.dev_split == dev_split.name:
            evals[rs.set_name] = tokenized(tokenizer, task, rs.examples, args.max_seq_len)
    regression = task.type == "regression"

    def metrics(pred) -> dict[str, float]:
        logits = np.asarray(pred.predictions)
        guesses = logits.reshape(len(logits), -1)[:, 0] if regression else logits.argmax(-1)
        return compute_metrics(task.metrics, guesses, np.asarray(pred.label_ids))

    def epoch_steps(state) -> int:
        """Optimizer steps per epoch (the Trainer plans a whole number of them per epoch)."""
        return state.max_steps // args.epochs

    class Checkpoints(TrainerCallback):
        """The run's clock (training steps only: evaluations and checkpoint saves are left out, as in mt_dnn.train),
        written into each checkpoint once the Trainer has saved it whole; and the order of saving and evaluating
        at an epoch's end. The Trainer would save a checkpoint at the epoch's last step before it evaluates the
        epoch, and a run resumed from it would never evaluate that epoch: such a save waits for the epoch's end,
        after the evaluation (none at the very end, where metrics.jsonl is written instead)."""

        def on_step_begin(self, targs, state, control, **kwargs):
            clock["begin"] = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            clock["steps"] += time.perf_counter() - clock["begin"]
            if state.global_step % epoch_steps(state) == 0:
                control.should_save = False  # an epoch's last step: saved at the epoch's end, after its evaluation
            return control

        def on_epoch_end(self, targs, state, control, **kwargs):
            if args.save_every_steps and state.global_step < state.max_steps:
                control.should_save = True
            return control

        def on_save(self, targs, state, control, **kwargs):
            folder = Path(targs.output_dir) / f"checkpoint-{state.global_step}"
            atomic.write_text(folder / ELAPSED, json.dumps({"seconds": clock["steps"], "step": state.global_step}))

    saving = {"save_strategy": "steps", "save_steps": args.save_every_steps,
              "save_total_limit": 2} if args.save_every_steps else {"save_strategy": "no"}
    targs = TrainingArguments(
        output_dir=str(trainer_dir), report_to="none", seed=args.seed, num_train_epochs=args.epochs,
        learning_rate=args.lr, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
        warmup_steps=0.1,  # a float below 1: a fraction of the steps
        weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear",
        # every step's loss in the Trainer's log, which its checkpoints keep: the last epoch's mean loss is then the
        # same whether or not the run was resumed (an epoch-long log would average only the steps after a resume)
        eval_strategy="epoch", logging_strategy="steps", logging_steps=1, disable_tqdm=True, **saving,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())  # pinning needs a GPU
    trainer = Trainer(model=model, args=targs, train_dataset=tokenized(tokenizer, task, train_ex, args.max_seq_len),
                      eval_dataset=evals, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=metrics, callbacks=[Checkpoints()])
    trainer.remove_callback(PrinterCallback)  # it would print every step's log line; the evaluations are logged below
    out.mkdir(parents=True, exist_ok=True)
    if resume is None:
        atomic.write_text(out / "config.json", json.dumps(config, indent=2))
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = clock["steps"]
    steps_per_epoch = epoch_steps(trainer.state)
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
    # the last epoch's mean training loss, from the per-step log
    first_of_last = trainer.state.max_steps - steps_per_epoch
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and h["step"] > first_of_last]
    lines.append(json.dumps({"epoch": args.epochs - 1, "step": trainer.state.global_step, "split": "train",
                             "method": METHOD, "seed": args.seed, "train_seconds": round(seconds, 3),
                             "steps": trainer.state.global_step, "loss": float(np.mean(losses)) if losses else None,
                             "reg_loss": 0.0, "steps_per_epoch": steps_per_epoch}))
    atomic.write_text(out / "metrics.jsonl", "\n".join(lines) + "\n")
    shutil.rmtree(trainer_dir, ignore_errors=True)  # the checkpoints: the run is whole in metrics.jsonl
    for line in lines[:-1]:
        logger.info("%s", line)
    print(f"{task.name} seed {args.seed}: {len(lines) - 1} evaluations, {seconds:.0f} s; run folder {out}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
