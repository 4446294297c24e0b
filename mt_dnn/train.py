"""CLI: ``python -m mt_dnn.train --tasks rte[,mrpc,...] --method standard|smart|rapt|r3f [options]``.

Flags are generated from their declarations (``mt_dnn.flags``): the ``TrainConfig`` dataclass, ``--threads``, and
each registered method's ``Options`` (``--<method>_<option>``). ``--config FILE.yml`` supplies values, checked
like flags; flags on the command line win. Flags are never abbreviated (``--epoch`` is an error, not
``--epochs``), so what was typed is always what wins.
Under torchrun only rank 0 logs to the console and ``train.log``; the other ranks show warnings and errors.
SIGUSR2 or SIGTERM during training: the step ends, ``checkpoint/`` is written and the exit status is 75
(``mt_dnn.stop``); ``--resume`` continues.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from data_utils.task_def import ConfigError
from mt_dnn import runtime, stop
from mt_dnn.cli_utils import close_log_files, run_cli, setup_logging
from mt_dnn.config import TrainConfig
from mt_dnn.flags import Flag, add_flags, check_mapping, declared, given, markdown
from mt_dnn.perturbation import REGISTRY, option_flags
from mt_dnn.trainer import Trainer

logger = logging.getLogger(__name__)


def train_flags() -> list[Flag]:
    """Every flag of ``mt_dnn.train``: the run's settings (``TrainConfig``), ``--threads``, and each method's
    options (``--<method>_<option>``)."""
    run = [replace(f, choices=tuple(REGISTRY)) if f.key == "method" else f for f in declared(TrainConfig)]
    return [*run, runtime.THREADS, *(f for name in REGISTRY for f in option_flags(name))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mt_dnn.train",
        description="Multi-task fine-tuning on GLUE with standard, SMART, RAPT or R3F training. "
                    f"Methods: {', '.join(REGISTRY)}.",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of flag values, by flag name without the dashes (lr: 1.0e-4, "
                                         "rapt_eta: 2.0, tf32: false); flags given here win")
    flags = train_flags()
    add_flags(parser.add_argument_group("run"), [f for f in flags if not f.method])
    for name, cls in REGISTRY.items():
        group = parser.add_argument_group(f"--method {name} options ({cls.__doc__.splitlines()[0]})")
        add_flags(group, [f for f in flags if f.method == name])
    return parser


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags typed (checked against their declarations) over those of ``--config`` (checked the same way,
    errors naming the file and key): ``{key: value}`` of every flag given either way."""
    flags = train_flags()
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict) and data is not None:
            raise ConfigError(f"{path}: expected a mapping of flag names to values")
        values = check_mapping(data or {}, flags, str(path))
    return {**values, **given(args, flags)}


def train_config(values: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of flag values ``{key: value}``; what is not given keeps its default (--glue_dir:
    $GLUE_DIR, else glue_data; --output_dir: runs/<tasks joined by +>-<method>-s<seed>). An option of another
    method than --method is an error."""
    run = {f.field: values[f.key] for f in declared(TrainConfig) if f.key in values}
    method = run.setdefault("method", "standard")
    cfg = TrainConfig(**run, method_options=method_options(values, method))
    if "glue_dir" not in run:
        cfg.glue_dir = os.environ.get("GLUE_DIR", "glue_data")
    if "output_dir" not in run:
        cfg.output_dir = f"runs/{cfg.tasks.replace(',', '+')}-{method}-s{cfg.seed}"
    return cfg


def method_options(values: dict[str, Any], method: str) -> dict[str, Any]:
    """``method``'s options among flag values ``{key: value}``, by field name (``{"lambda_": 2.0}``); an option of
    another method is an error."""
    options = {}
    for name in REGISTRY:
        for f in option_flags(name):
            if f.key in values:
                if name != method:
                    raise ConfigError(f"--{f.key} is an option of --method {name}, but --method is {method}")
                options[f.field] = values[f.key]
    return options


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve flags (and --config) into a TrainConfig."""
    return train_config(settings_from_args(args))


def markdown_reference() -> str:
    """The flag reference of ``mt_dnn.train`` as Markdown tables, rendered from its parser (what --help shows)."""
    return markdown(build_parser())


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_args(build_parser().parse_args(argv))
    cfg = train_config(settings)
    cfg.validate(given=settings)
    threads = runtime.set_threads(settings.get("threads"))
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
        logger.info("%d CPU threads (--threads)", threads)
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
        close_log_files()
    best = Path(cfg.output_dir) / "best"
    if not cfg.no_eval and trainer.is_main and math.isfinite(trainer.best_score):
        print(f"best dev score {trainer.best_score:.4f}; model in {best}")
    elif not cfg.no_eval and trainer.is_main:
        print(f"no best model: no dev evaluation gave a score (nothing written to {best})")
    elif trainer.is_main:  # --no_eval: nothing to compare, the final model is kept
        print(f"no evaluation (--no_eval); final model in {best}")
    return 0


def cli() -> None:
    """Console-script entry point (``mt-dnn-train``)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
