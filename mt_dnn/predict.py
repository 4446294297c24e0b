"""CLI: dev scores, test predictions and a GLUE test-server submission from trained runs.

    python -m mt_dnn.predict --checkpoint RUN_DIR [--checkpoint RUN_DIR2 ...] --glue_dir DIR \
        --submission_dir OUT [--tasks rte,mrpc]
    python -m mt_dnn.predict --checkpoint RUN_DIR --task rte --input my.tsv|my.jsonl --output preds.jsonl \
        [--text_a COL --text_b COL --id_column COL]

Each checkpoint is a run folder (its ``best/`` model is used) or a saved model folder. Several runs can
contribute (one per task, or one multi-task run); for a task in several, the first checkpoint given wins.
Every dev split is scored (printed, and written to ``OUT/dev_scores.json``); every test split with a model
and a test file is predicted; the rest of the 11 official files are filled with the task's baseline label,
and the command says so loudly. The zip is validated before success is reported.

With ``--input``, your own rows are predicted instead (see :mod:`mt_dnn.api`): a TSV file with a header or
JSON lines holding the task's text columns (as named in its task definition, or by ``--text_a/--text_b``) and
an optional id column (``--id_column``; else ``id`` or ``index`` when present; else the row number from 0).
Each output line is ``{"id", "label", "probabilities": {label: p}}``, or ``{"id", "score"}`` for regression.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from data_utils.features import load_features
from data_utils.glue import split_path
from data_utils.metrics import compute_metrics
from data_utils.submission import baseline_rows, check_submission, format_prediction, submission_files, write_submission
from data_utils.task_def import load_task_defs
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.model import find_model_dir, load_model
from mt_dnn.trainer import pick_device, predict

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mt_dnn.predict", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="run folder or model folder (repeatable)")
    p.add_argument("--glue_dir", help="GLUE data folder (required without --input)")
    p.add_argument("--submission_dir", help="where the 11 files and the zip go (required without --input)")
    p.add_argument("--tasks", default=None, help="only these tasks (comma-separated); default: all the runs have")
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--max_seq_len", type=int, default=None, help="default: the run's own")
    p.add_argument("--cache_dir", default=None, help="feature cache (default: none)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--zip_name", default="submission.zip")
    own = p.add_argument_group("your own text (instead of GLUE files)")
    own.add_argument("--input", help="TSV file with a header, or JSON lines (.jsonl), to predict")
    own.add_argument("--task", help="the task whose head predicts the rows (with --input)")
    own.add_argument("--output", help="JSON-lines predictions, one line per input row (with --input)")
    own.add_argument("--text_a", help="column of the first text (default: the task's own name, e.g. sentence1)")
    own.add_argument("--text_b", help="column of the second text of pair tasks (default: the task's own name)")
    own.add_argument("--id_column", help="column of the row id (default: id or index when present, else the row "
                                         "number from 0)")
    own.add_argument("--input_format", default="auto", choices=("auto", "tsv", "jsonl"),
                     help="auto: from the extension (.tsv/.txt, .jsonl/.json)")
    args = p.parse_args(argv)
    setup_logging()
    if args.input is not None:
        return predict_own_input(args, p)
    if not args.glue_dir or not args.submission_dir:
        p.error("--glue_dir and --submission_dir are required (or --input FILE --task TASK --output FILE)")
    device = pick_device(args.device)
    wanted = set(args.tasks.split(",")) if args.tasks else None
    official = load_task_defs()
    dev_scores: dict[str, dict] = {}
    rows_by_file: dict[str, list[tuple[str, str]]] = {}
    source: dict[str, str] = {}
    for ckpt in args.checkpoint:
        d = find_model_dir(ckpt)
        model, tokenizer, tasks = load_model(d)
        model.to(device).eval()
        run_cfg = d.parent / "config.json"
        max_len = args.max_seq_len or (json.loads(run_cfg.read_text())["max_seq_len"] if run_cfg.is_file() else 128)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # tasks this model can predict: its own, and those predicted by one of its heads (AX by mnli)
        usable = {t.name: t for t in tasks}
        for t in official.values():
            if t.head and t.head in model.heads and t.name not in usable:
                usable[t.name] = t
        for name, task in usable.items():
            if wanted is not None and name not in wanted and task.head_name not in wanted:
                continue
            if name not in model.task_defs:
                model.task_defs[name] = task
            for split in task.splits_of("dev"):
                key = f"{name}/{split.name}"
                if key in dev_scores or not split_path(args.glue_dir, task, split).is_file():
                    continue
                feats = load_features(args.glue_dir, task, split, tokenizer, max_len, args.cache_dir)
                preds = predict(model, feats, args.eval_batch_size, device, pad, args.precision)
                dev_scores[key] = {"checkpoint": str(d), **compute_metrics(task.metrics, preds, feats.labels)}
                print(f"dev {key}: " + "  ".join(f"{k} {v:.4f}" for k, v in dev_scores[key].items()
                                                   if k != "checkpoint"))
            for split in task.splits_of("test"):
                if not split.submission or split.submission in rows_by_file:
                    continue
                if not split_path(args.glue_dir, task, split).is_file():
                    logger.warning("%s: no test file %s", name, split_path(args.glue_dir, task, split))
                    continue
                feats = load_features(args.glue_dir, task, split, tokenizer, max_len, args.cache_dir)
                preds = predict(model, feats, args.eval_batch_size, device, pad, args.precision)
                rows_by_file[split.submission] = [(idx, format_prediction(task, v))
                                                  for idx, v in zip(feats.indices, preds.tolist())]
                source[split.submission] = str(d)
                logger.info("%s: predicted %d test rows with %s", split.submission, len(feats), d)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    filled = []
    for name, (task, split) in submission_files(official).items():
        if name not in rows_by_file:
            rows_by_file[name] = baseline_rows(task, split, args.glue_dir)
            filled.append(f"{name} ({task.name}: '{task.baseline_label}')")
    out = Path(args.submission_dir)
    zip_path = write_submission(out, rows_by_file, zip_name=args.zip_name, tasks=official)
    (out / "dev_scores.json").write_text(json.dumps(dev_scores, indent=2))
    problems = check_submission(zip_path, official, args.glue_dir)
    print(f"predicted by a model: {', '.join(sorted(source)) or 'none'}")
    if filled:
        print("!" * 78)
        print(f"BASELINE-FILLED (no trained head or no test file), {len(filled)} of {len(rows_by_file)} files:")
        for f in filled:
            print(f"  - {f}")
        print("!" * 78)
    if problems:
        for prob in problems:
            print(f"PROBLEM: {prob}", file=sys.stderr)
        print(f"error: {zip_path} failed validation ({len(problems)} problems)", file=sys.stderr)
        return 1
    print(f"OK: {zip_path} is a valid GLUE submission (validated); dev scores in {out / 'dev_scores.json'}")
    return 0


def predict_own_input(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--input``: predict the rows of the user's file with one run; write ``--output`` atomically."""
    from mt_dnn.api import load_run, predict_file

    if not args.task or not args.output:
        parser.error("--input needs --task and --output")
    if len(args.checkpoint) != 1:
        parser.error("--input takes one --checkpoint")
    predictor = load_run(args.checkpoint[0], args.device, args.eval_batch_size, args.precision, args.max_seq_len)
    n = predict_file(predictor, args.task, args.input, args.output, args.text_a, args.text_b, args.id_column,
                     args.input_format)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
