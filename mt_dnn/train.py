"""CLI: ``python -m mt_dnn.train --tasks rte[,mrpc,...] --method standard|smart|rapt|r3f [options]``.

Flags come from the ``TrainConfig`` dataclass and from each registered method's ``Options`` dataclass
(``--<method>_<option>``). ``--config FILE.yml`` supplies defaults; flags on the command line win. Flags are
never abbreviated (``--epoch`` is an error, not ``--epochs``), so what was typed is always what wins.
Under torchrun only rank 0 logs to the console and ``train.log``; the other ranks show warnings and errors.
SIGUSR2 or SIGTERM during training: the step ends, ``checkpoint/`` is written and the exit status is 75
(``mt_dnn.stop``); ``--resume`` continues.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from data_utils.glue import BAD_ROWS
from data_utils.task_def import ConfigError
from mt_dnn import stop
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.perturbation import REGISTRY, option_flags
from mt_dnn.config import OPTIMIZERS, PRECISIONS, TrainConfig
from mt_dnn.trainer import Trainer

logger = logging.getLogger(__name__)

HELP = {
    "tasks": "comma-separated task names (cola, sst, mrpc, stsb, qqp, mnli, qnli, rte, wnli, or --task_def ones)",
    "method": "training method (regularizer)",
    "glue_dir": "folder with the GLUE task folders (default: $GLUE_DIR, else ./glue_data)",
    "output_dir": "run folder: config.json, metrics.jsonl, train.log, best/ (default runs/<tasks>-<method>-s<seed>)",
    "model": "encoder: a hub name or a local path (default: the packaged all-MiniLM-L6-v2)",
    "task_def": "extra YAML task definitions (adds or overrides tasks; repeatable)",
    "cache_dir": "feature cache folder (default: <output_dir>/../.cache/features; never inside GLUE_DIR)",
    "bad_rows": "a malformed row in a train/dev file (wrong field count, unknown label, bad score): error stops "
                "with file:line; skip drops such rows with one warning (test files are always strict)",
    "max_seq_len": "truncate inputs to this many tokens",
    "max_train_samples": "train on a seeded random subset of this many rows per task (quick runs)",
    "pooling": "sentence vector: auto follows the checkpoint (sentence-transformers: mean; else [CLS])",
    "epochs": "training epochs (one epoch = one pass over every task's batches)",
    "max_steps": "stop after this many optimizer steps (overrides --epochs; evaluates at the end)",
    "batch_size": "rows per batch (per process)",
    "eval_batch_size": "rows per evaluation batch",
    "lr": "peak learning rate (default: 1e-4 for the packaged MiniLM, 2e-5 for any other encoder, as in the paper)",
    "weight_decay": "AdamW weight decay (not on biases and LayerNorm)",
    "warmup": "fraction of steps with linear warm-up, then linear decay to 0",
    "clip": "gradient norm clipping",
    "optimizer": "optimizer",
    "seed": "random seed (data order, dropout, noise, RAPT's layer draws)",
    "no_eval": "skip dev evaluation (the final model is saved as best/)",
    "task_sampling": "how multi-task batches are mixed: proportional (every batch once per epoch), uniform, "
                     "temperature (p ~ n^(1/T))",
    "sampling_temperature": "T for --task_sampling temperature",
    "precision": "fp32, or bf16/fp16 autocast (regularizer divergences stay fp32)",
    "grad_accumulation_steps": "micro-batches per optimizer step",
    "init_checkpoint": "start from a trained run (its encoder and the heads of matching tasks)",
    "max_bad_steps": "stop after this many consecutive non-finite steps",
    "save_every_steps": "write a resumable checkpoint/ every N steps (and at each epoch end)",
    "resume": "continue the run in --output_dir from its checkpoint exactly (bit-identical on CPU); refused if a "
              "result-changing setting differs; no checkpoint = fresh start",
    "overwrite": "replace the run in --output_dir (its checkpoint included); without --resume or --overwrite a "
                 "folder holding another run is an error",
    "log_every": "log the running loss every N steps",
    "device": "auto (cuda if available), cpu, cuda, cuda:1, ...",
    "tf32": "on CUDA, keep float32 matmuls in full fp32 instead of TF32 (TF32 is the default on GPUs: several times "
            "faster on Ampere and newer, results differ in the last digits; no effect on CPU)",
}
CHOICES = {"method": None, "bad_rows": BAD_ROWS, "pooling": ("auto", "cls", "mean"), "optimizer": OPTIMIZERS, "precision": PRECISIONS,
           "task_sampling": ("proportional", "uniform", "temperature")}
INTERNAL = {"method_options", "world_size"}


def _type_of(f: dataclasses.Field) -> type:
    annotation = str(f.type)
    if "int" in annotation and "float" not in annotation:
        return int
    if "float" in annotation:
        return float
    return str


def build_parser() -> argparse.ArgumentParser:
    methods = list(REGISTRY)
    parser = argparse.ArgumentParser(
        prog="python -m mt_dnn.train",
        description="Multi-task fine-tuning on GLUE with standard, SMART, RAPT or R3F training. "
                    f"Methods: {', '.join(methods)}.",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of flag values (flags given here win)")
    main = parser.add_argument_group("run")
    for f in dataclasses.fields(TrainConfig):
        if f.name in INTERNAL:
            continue
        name = f"--{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in ("glue_dir", "output_dir"):
            default = None  # resolved later ($GLUE_DIR; a name from the run's settings)
        text = HELP[f.name] + (f" (default: {default})" if default not in (None, False) else "")
        if f.name == "task_def":
            main.add_argument(name, action="append", default=[], help=HELP[f.name])
        elif f.name in ("no_eval", "resume", "overwrite"):
            main.add_argument(name, action="store_true", help=HELP[f.name])
        elif f.name == "tf32":  # on by default: the flag turns it off
            main.add_argument("--no_tf32", dest="tf32", action="store_false", help=HELP[f.name])
        else:
            choices = methods if f.name == "method" else CHOICES.get(f.name)
            main.add_argument(name, type=_type_of(f), default=default, choices=choices, help=text)
    for method in methods:
        group = parser.add_argument_group(f"--method {method} options ({REGISTRY[method].__doc__.splitlines()[0]})")
        for m, flag, default, meta, field_name in option_flags():
            if m != method:
                continue
            kwargs: dict[str, Any] = {"dest": f"opt__{m}__{field_name}", "default": None,
                                      "metavar": field_name.rstrip("_").upper(),
                                      "help": f"{meta.get('help', '')} (default: {default})"}
            if isinstance(default, bool):
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = type(default)
                if meta.get("choices"):
                    kwargs["choices"] = meta["choices"]
            group.add_argument(f"--{flag}", **kwargs)
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                     argv: list[str] | None = None) -> TrainConfig:
    """Resolve flags (and --config) into a TrainConfig; options of another method than --method are an error."""
    values = vars(args).copy()
    file_values: dict[str, Any] = {}
    if values.pop("config", None):
        path = Path(args.config)
        try:
            file_values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from None
        if not isinstance(file_values, dict):
            raise ConfigError(f"{path}: expected a mapping of flag names to values")
        known = {a.dest for a in parser._actions}
        known |= {f"{m}_{fn.rstrip('_')}" for m, _, _, _, fn in option_flags()}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    # flags the user typed win over the file; the file wins over defaults
    given = sys.argv[1:] if argv is None else argv
    typed = {a.dest for a in parser._actions
             if any(g == opt or g.startswith(opt + "=") for g in given for opt in a.option_strings)}
    method = values["method"] if "method" in typed or "method" not in file_values else file_values["method"]
    options: dict[str, Any] = {}
    for m, flag, _, _, field_name in option_flags():
        value = values.pop(f"opt__{m}__{field_name}")
        if value is None:
            value = file_values.get(flag)
        if value is None:
            continue
        if m != method:
            raise ConfigError(f"--{flag} is an option of --method {m}, but --method is {method}")
        options[field_name] = value
    cfg_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in values.items() if k in cfg_fields}
    for k, v in file_values.items():
        if k in cfg_fields and k not in typed:
            kwargs[k] = v
    kwargs["method"] = method
    kwargs["method_options"] = options
    if kwargs.get("glue_dir") is None:
        kwargs["glue_dir"] = os.environ.get("GLUE_DIR", "glue_data")
    if kwargs.get("output_dir") is None:
        kwargs["output_dir"] = f"runs/{kwargs['tasks'].replace(',', '+')}-{method}-s{kwargs['seed']}"
    return TrainConfig(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser, argv)
    cfg.validate()
    main_process = os.environ.get("RANK", "0") == "0"  # torchrun's other ranks: warnings and errors only
    level = logging.INFO if main_process else logging.WARNING
    setup_logging(level=level)
    trainer = Trainer(cfg)
    held = logging.handlers.BufferingHandler(capacity=100_000)  # set-up messages, for train.log
    logging.getLogger().addHandler(held)
    try:
        try:
            trainer.setup()  # every data, model, flag and folder error surfaces here, before anything is written
            trainer.prepare_output()  # before train.log opens: --overwrite removes the old one
        finally:
            logging.getLogger().removeHandler(held)
        setup_logging(Path(cfg.output_dir) / "train.log" if main_process else None, level=level)
        logger.info("command: %s", " ".join(sys.argv))
        for handler in logging.getLogger().handlers:  # the set-up messages were shown already; now also in the file
            if isinstance(handler, logging.FileHandler):
                for record in held.buffer:
                    handler.handle(record)
        trainer.train()
    except stop.Stopped as exc:
        logger.warning("%s", exc)
        return stop.EXIT_STOPPED
    finally:
        trainer.close()
    if not cfg.no_eval and trainer.is_main:
        print(f"best dev score {trainer.best_score:.4f}; model in {Path(cfg.output_dir) / 'best'}")
    return 0


def cli() -> None:
    """Console-script entry point (``mt-dnn-train``)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
