"""CLI: dev scores, test predictions and a GLUE test-server submission from trained runs.

    python -m mt_dnn.predict --checkpoint RUN_DIR [--checkpoint RUN_DIR2 ...] --glue_dir DIR \
        --submission_dir OUT [--tasks rte,mrpc]
    python -m mt_dnn.predict --checkpoint RUN_DIR --task rte --input my.tsv|my.jsonl --output preds.jsonl \
        [--text_a COL --text_b COL --id_column COL]

Each checkpoint is a run folder (its ``best/`` model is used, or ``best.old/`` when a save was interrupted)
or a saved model folder. Several runs can contribute (one per task, or one multi-task run); for a task in
several, the first checkpoint given wins. Every dev split is scored (printed, and written to
``OUT/dev_scores.json``); every test split with a model and a test file is predicted; the rest of the 11
official files are filled with the task's baseline label, and the command says so loudly. The zip is
validated before success is reported. A task's robustness sets (AdvGLUE for SST-2, QQP, MNLI, QNLI and RTE,
from ``--robustness_dir``) are scored beside its dev splits, under ``"robustness"`` in ``dev_scores.json``.

Everything that can be checked without predicting is checked first, before anything is written: the output
folder, every checkpoint's files, the ``--tasks`` names (each must be a known task that some checkpoint has a
head for), and that ``--max_seq_len`` and the token types fit each encoder.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from data_utils import atomic
from data_utils.encoder_limits import check_encoder_fits
from data_utils.features import load_features, save_pending
from data_utils.glue import BAD_ROWS, split_path
from data_utils.metrics import compute_metrics
from data_utils.output_paths import check_output_file, is_stdout
from data_utils.robustness import RobustSplit, load_sets, robustness_dir, tokenize_set
from data_utils.submission import (SubmissionWriter, baseline_rows, check_output, check_submission, format_prediction,
                                   submission_files)
from data_utils.task_def import ConfigError, TaskDef, load_task_defs, select_tasks
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.config import TrainConfig
from mt_dnn.flags import DefaultsHelpFormatter, declared
from mt_dnn.model import find_model_dir, load_model
from mt_dnn.runtime import THREADS, set_threads
from mt_dnn.saved_model import SavedModel, files_read, read_model_dir, run_max_len
from mt_dnn.trainer import pick_device, predict

logger = logging.getLogger(__name__)

@dataclass
class Plan:
    """One checkpoint's share of the work, settled before anything is predicted or written."""

    dir: Path
    max_len: int
    tasks: dict[str, TaskDef]  # the tasks it predicts: its own and those predicted by one of its heads (AX by mnli)
    # (task, dev split) -> the robustness sets scored beside it, read (and checked) before anything is predicted
    robust: dict[tuple[str, str], list[RobustSplit]] = field(default_factory=dict)


def plan_checkpoints(saved: list[SavedModel], official: dict[str, TaskDef], tasks_flag: str | None,
                     max_seq_len: int | None) -> list[Plan]:
    """What each checkpoint predicts; every ``--tasks`` name must be known and have a head somewhere."""
    known = dict(official)
    for s in saved:
        for t in s.tasks:
            known.setdefault(t.name, t)
    wanted = None if tasks_flag is None else {t.name for t in select_tasks(known, tasks_flag)}
    plans = []
    for s in saved:
        usable = {t.name: with_packaged_sets(t, official, s.dir) for t in s.tasks}
        for t in official.values():
            if t.head and t.head in s.heads and t.name not in usable:
                usable[t.name] = s.definitions[t.name]  # as the run reads it: its head's label order
        if wanted is not None:
            usable = {n: t for n, t in usable.items() if n in wanted or t.head_name in wanted}
        max_len = run_max_len(s.dir, max_seq_len) if usable else 0
        if usable:  # a checkpoint left out by --tasks is not loaded, so its limits do not matter
            check_encoder_fits(s.config, s.tokenizer, usable.values(), max_len, name=str(s.dir))
        plans.append(Plan(s.dir, max_len, usable))
    if wanted is not None:
        covered = {n for p in plans for n in p.tasks}
        missing = sorted(wanted - covered)
        if missing:
            heads = sorted({n for s in saved for n in s.heads})
            raise ConfigError(f"--tasks {','.join(missing)}: no checkpoint has a head for it (the checkpoints' "
                              f"heads: {', '.join(heads) or 'none'}); nothing would be predicted for it")
    return plans


def with_packaged_sets(task: TaskDef, official: dict[str, TaskDef], where: Path) -> TaskDef:
    """``task`` as a run saved it; a run saved before task definitions listed robustness sets gets the packaged
    definition's sets (AdvGLUE), where the packaged task has the same name and label names."""
    packaged = official.get(task.name)
    if task.robustness or packaged is None or not packaged.robustness or \
            set(packaged.labels or ()) != set(task.labels or ()):
        return task
    logger.info("%s: its task %s lists no robustness sets; scoring the packaged ones (%s)", where, task.name,
                ", ".join(packaged.robustness))
    return replace(task, robustness=packaged.robustness)


def check_inputs(plans: list[Plan], glue_dir: str, robustness_flag: str | None, tasks_flag: str | None) -> None:
    """Before anything is predicted: read every robustness set the plans score (a malformed file stops here;
    an explicit --robustness_dir must exist); each --tasks name needs a dev or test file, and without --tasks
    some task one (a wrong --glue_dir would otherwise give a submission of baseline labels only)."""
    folder = robustness_dir(robustness_flag, glue_dir)  # a --robustness_dir that does not exist: an error
    warned: set[str] = set()
    has_file: dict[str, set[str]] = {}  # task -> the kinds of file found ("dev", "test")
    for plan in plans:
        for name, task in plan.tasks.items():
            for rs in load_sets(task, folder, warned):
                plan.robust.setdefault((name, rs.dev_split), []).append(rs)
            for kind in ("dev", "test"):
                if any(split_path(glue_dir, task, sp).is_file() for sp in task.splits_of(kind)):
                    has_file.setdefault(name, set()).add(kind)
    if tasks_flag is not None:
        planned = {n: t for p in plans for n, t in p.tasks.items()}
        empty = sorted(n for n in planned if n not in has_file)
        if empty:
            raise ConfigError(f"--tasks {','.join(empty)}: no dev or test file under --glue_dir {glue_dir} (e.g. "
                              f"{split_path(glue_dir, planned[empty[0]], planned[empty[0]].splits_of('dev')[0])}); "
                              "nothing would be predicted for it")
    if any(p.tasks for p in plans) and not has_file:
        raise ConfigError(f"--glue_dir {glue_dir}: no dev or test file of any task the checkpoints predict (e.g. "
                          f"{next(split_path(glue_dir, t, t.splits_of('dev')[0]) for p in plans for t in p.tasks.values())}"
                          "); nothing would be predicted")


def _checked_flags() -> list:
    """The flags predict shares with mt_dnn.train, with the ranges train declares for them."""
    train = {f.key: f for f in declared(TrainConfig)}
    return [train["eval_batch_size"], train["max_seq_len"], THREADS]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mt_dnn.predict", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="run folder or model folder (repeatable)")
    p.add_argument("--glue_dir", help="GLUE data folder (required without --input)")
    p.add_argument("--submission_dir", help="where the 11 files and the zip go (required without --input)")
    p.add_argument("--tasks", default=None, help="only these tasks (comma-separated; each must have a head in a "
                                                 "checkpoint); default: all the runs have")
    checked = _checked_flags()
    p.add_argument("--eval_batch_size", type=int, default=128, help=f"rows per batch ({checked[0].range_text()})")
    p.add_argument("--max_seq_len", type=int, default=None,
                   help=f"{checked[1].range_text()}; default: the run's own")
    p.add_argument("--threads", type=int, default=None, help=THREADS.help)
    p.add_argument("--cache_dir", default=None, help="feature cache (default: none)")
    p.add_argument("--robustness_dir", default=None,
                   help="folder of the robustness sets' files (AdvGLUE's dev.json), scored beside each dev split in "
                        "dev_scores.json (default: $ROBUSTNESS_DIR, else an advglue folder beside --glue_dir)")
    p.add_argument("--bad_rows", default="error", choices=BAD_ROWS,
                   help="a malformed row in a dev file: error, or skip it with one warning (test files are strict)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32, or the forward under bf16/fp16 autocast")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--zip_name", default="submission.zip", help="name of the zip written in --submission_dir")
    own = p.add_argument_group("your own text (instead of GLUE files)")
    own.add_argument("--input", help="TSV file with a header, or JSON lines (.jsonl), to predict")
    own.add_argument("--task", help="the task whose head predicts the rows (with --input)")
    own.add_argument("--output", help="JSON-lines predictions, one line per input row (with --input); - or "
                                      "/dev/stdout for stdout (a symlink is written through, a pipe written into)")
    own.add_argument("--text_a", help="column of the first text (default: the task's own name, e.g. sentence1)")
    own.add_argument("--text_b", help="column of the second text of pair tasks (default: the task's own name)")
    own.add_argument("--id_column", help="column of the row id (default: id or index when present, else the row "
                                         "number from 0)")
    own.add_argument("--input_format", default="auto", choices=("auto", "tsv", "jsonl"),
                     help="auto: from the extension (.tsv/.txt, .jsonl/.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    for flag in _checked_flags():
        if getattr(args, flag.key) is not None:
            flag.parse(getattr(args, flag.key))
    set_threads(args.threads)
    setup_logging()
    refuse_other_modes_flags(args, p)
    if args.input is not None:
        return predict_own_input(args, p)
    if not args.glue_dir or not args.submission_dir:
        p.error("--glue_dir and --submission_dir are required (or --input FILE --task TASK --output FILE)")
    # every check that needs no prediction comes first: a bad flag or file costs nothing and writes nothing
    out = Path(args.submission_dir)
    check_output(out, args.zip_name)
    if not Path(args.glue_dir).is_dir():
        raise ConfigError(f"--glue_dir {args.glue_dir}: no such folder")
    device = pick_device(args.device)
    official = load_task_defs()
    saved = [read_model_dir(find_model_dir(ckpt)) for ckpt in args.checkpoint]
    plans = plan_checkpoints(saved, official, args.tasks, args.max_seq_len)
    del saved
    check_inputs(plans, args.glue_dir, args.robustness_dir, args.tasks)
    pending: list = []  # cache files, written only once everything has been predicted
    dev_scores: dict[str, dict] = {}
    source: dict[str, str] = {}
    # each test file is written as soon as it is predicted (rows formatted as they are written); the zip and
    # the move into --submission_dir come last, and a failure on the way leaves nothing there
    with SubmissionWriter(out, args.zip_name, official) as writer:
        for plan in plans:
            if not plan.tasks:
                logger.info("%s: none of --tasks %s, skipped", plan.dir, args.tasks)
                continue
            predict_plan(plan, args, device, dev_scores, writer, source, pending)
        filled = []
        for name, (task, split) in submission_files(official).items():
            if name not in writer:
                writer.add(name, baseline_rows(task, split, args.glue_dir))
                filled.append(f"{name} ({task.name}: '{task.baseline_label}')")
        zip_path = writer.finish()
    atomic.write_text(out / "dev_scores.json", json.dumps(dev_scores, indent=2))
    save_pending(pending)
    problems = check_submission(zip_path, official, args.glue_dir)
    print(f"predicted by a model: {', '.join(sorted(source)) or 'none'}")
    if filled:
        print("!" * 78)
        print(f"BASELINE-FILLED (no trained head or no test file), {len(filled)} of {len(writer.rows)} files:")
        for f in filled:
            print(f"  - {f}")
        print("!" * 78)
    if problems:
        for prob in problems:
            print(f"PROBLEM: {prob}", file=sys.stderr)
        print(f"error: {zip_path} failed validation ({len(problems)} problems)", file=sys.stderr)
        return 1
    if not source:
        print(f"OK: {zip_path} is valid but holds baseline labels only: no test file was predicted by a model; dev "
              f"scores in {out / 'dev_scores.json'}")
        return 0
    print(f"OK: {zip_path} is a valid GLUE submission (validated); dev scores in {out / 'dev_scores.json'}")
    return 0


def predict_plan(plan: Plan, args: argparse.Namespace, device: torch.device, dev_scores: dict[str, dict],
                 writer: SubmissionWriter, source: dict[str, str], pending: list) -> None:
    """Score the dev splits and write the test files of one checkpoint's tasks (those not done by an earlier one).

    A split's features are flat arrays and its predictions one array (N,): rows are predicted in length-sorted
    batches, and the test file's lines are formatted as they are written.
    """
    d = plan.dir
    model, tokenizer, _ = load_model(d)
    model.to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for name, task in plan.tasks.items():
        if name not in model.task_defs:
            model.task_defs[name] = task
        for split in task.splits_of("dev"):
            key = f"{name}/{split.name}"
            if key in dev_scores:
                continue
            dev_file = split_path(args.glue_dir, task, split)
            if not dev_file.is_file():
                logger.warning("%s: no dev file %s: not scored%s", name, dev_file,
                               " (nor its robustness sets)" if plan.robust.get((name, split.name)) else "")
                continue
            feats = load_features(args.glue_dir, task, split, tokenizer, plan.max_len, args.cache_dir,
                                  pending=pending, bad_rows=args.bad_rows)
            preds = predict(model, feats, args.eval_batch_size, device, pad, args.precision)
            dev_scores[key] = {"checkpoint": str(d), **compute_metrics(task.metrics, preds, feats.labels)}
            print(f"dev {key}: " + "  ".join(f"{k} {v:.4f}" for k, v in dev_scores[key].items()
                                               if k != "checkpoint"))
            for rs in plan.robust.get((name, split.name), []):
                rfeats = tokenize_set(tokenizer, task, rs, plan.max_len)
                rmetrics = compute_metrics(task.metrics, predict(model, rfeats, args.eval_batch_size, device, pad,
                                                                 args.precision), rfeats.labels)
                dev_scores[key].setdefault("robustness", {})[rs.set_name] = rmetrics
                print(f"{rs.set_name} {key}: " + "  ".join(f"{k} {v:.4f}" for k, v in rmetrics.items()))
        for split in task.splits_of("test"):
            if not split.submission or split.submission in writer:
                continue
            if not split_path(args.glue_dir, task, split).is_file():
                logger.warning("%s: no test file %s", name, split_path(args.glue_dir, task, split))
                continue
            feats = load_features(args.glue_dir, task, split, tokenizer, plan.max_len, args.cache_dir,
                                  pending=pending)
            preds = predict(model, feats, args.eval_batch_size, device, pad, args.precision)
            writer.add(split.submission, ((idx, format_prediction(task, v)) for idx, v in zip(feats.indices, preds)))
            source[split.submission] = str(d)
            logger.info("%s: predicted %d test rows with %s", split.submission, len(feats), d)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


GLUE_ONLY = ("glue_dir", "submission_dir", "tasks", "cache_dir", "robustness_dir", "bad_rows", "zip_name")
INPUT_ONLY = ("task", "output", "text_a", "text_b", "id_column", "input_format")


def refuse_other_modes_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A flag of the other mode is an error, not ignored: ``--task rte`` without ``--input`` (for ``--tasks``)
    would otherwise predict every task."""
    given = [k for k in (GLUE_ONLY if args.input is not None else INPUT_ONLY)
             if getattr(args, k) != parser.get_default(k)]
    if given:
        flags = ", ".join(f"--{k}" for k in given)
        parser.error(f"{flags}: only with --glue_dir (GLUE files)" if args.input is not None else
                     f"{flags}: only with --input" + (" (for GLUE tasks, --tasks)" if "task" in given else ""))


def predict_own_input(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--input``: predict the rows of the user's file with one run; write ``--output`` atomically (or into stdout,
    a device or a pipe). The output is checked first: a folder, an unwritable place or a file the run reads is
    refused before anything is loaded."""
    from mt_dnn.api import load_run, predict_file

    if not args.task or not args.output:
        parser.error("--input needs --task and --output")
    if len(args.checkpoint) != 1:
        parser.error("--input takes one --checkpoint")
    check_output_file(args.output, [("the input", Path(args.input)), *files_read(find_model_dir(args.checkpoint[0]))])
    predictor = load_run(args.checkpoint[0], args.device, args.eval_batch_size, args.precision, args.max_seq_len)
    n = predict_file(predictor, args.task, args.input, args.output, args.text_a, args.text_b, args.id_column,
                     args.input_format)
    # with the predictions on stdout, the summary goes to stderr: stdout stays pure JSON lines
    print(f"wrote {n} prediction{'' if n == 1 else 's'} to {args.output}",
          file=sys.stderr if is_stdout(args.output) else sys.stdout)
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
