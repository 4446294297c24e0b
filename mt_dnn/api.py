"""Predictions on your own text from a trained run: ``load_run(RUN).predict(task, rows)``, and from a file.

    from mt_dnn import load_run
    model = load_run("runs/rte")                       # a run folder (its best/ model) or a saved model folder
    model.predict("rte", [("A man is playing a guitar.", "A person plays music.")])
    # [{"label": "entailment", "probabilities": {"entailment": 0.81, "not_entailment": 0.19}}]
    model.predict("stsb", [("A cat sits.", "A cat is sitting.")])      # regression: [{"score": 4.2}]

Rows go through exactly the GLUE prediction path: the task's tokenization
(:func:`data_utils.features.tokenize_examples`, in chunks, truncated to the run's ``max_seq_len``), length-sorted
batches padded to their longest row (:func:`data_utils.batching.eval_batches`, :func:`~data_utils.batching.collate`),
one no-grad forward of the model in eval mode; the label is the arg-max of the logits (what
``python -m mt_dnn.predict`` writes for GLUE files), the probabilities their softmax, a regression score the
head's output (not clipped).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from data_utils.encoder_limits import check_encoder_fits
from data_utils.features import Features, tokenize_examples
from data_utils.glue import DataError, Example
from data_utils.output_paths import check_output_file, open_output
from data_utils.task_def import ConfigError, SplitDef, TaskDef, load_task_defs
from data_utils.user_input import iter_user_rows, lone_surrogate, task_columns
from mt_dnn.model import MultiTaskModel, find_model_dir, load_model
from mt_dnn.saved_model import files_read, run_max_len
from mt_dnn.step import batch_logits
from mt_dnn.trainer import pick_device

logger = logging.getLogger(__name__)

Row = str | Sequence[str]  # one sentence, or (sentence, sentence) for pair tasks


def predict_logits(model: MultiTaskModel, features: Features, batch_size: int, device: torch.device, pad_id: int,
                   precision: str = "fp32") -> np.ndarray:
    """Logits (N, C) for every row of ``features`` in row order (C = 1 for regression); the model in eval mode.

    The same batches and forward as :func:`mt_dnn.trainer.predict` (which keeps only the arg-max or the score).
    """
    out: np.ndarray | None = None
    for rows, logits in batch_logits(model, features, batch_size, device, pad_id, precision):
        if out is None:
            out = np.zeros((len(features), logits.shape[-1]), dtype=np.float32)
        out[rows] = logits.cpu().numpy()
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


RECORD_CHUNK = 4096  # rows whose output dicts exist at once when records are streamed to a file


def iter_prediction_records(task: TaskDef, logits: np.ndarray) -> Iterator[dict[str, Any]]:
    """One dict per row of ``logits`` (N, C): ``{"label", "probabilities": {label: p}}``, or ``{"score"}`` for
    regression; made ``RECORD_CHUNK`` rows at a time (the softmax of a row does not depend on the others)."""
    labels = list(task.labels or ())
    for start in range(0, len(logits), RECORD_CHUNK):
        part = logits[start:start + RECORD_CHUNK]
        if task.type == "regression":
            yield from ({"score": float(v)} for v in part[:, 0])
            continue
        probs = torch.softmax(torch.from_numpy(part), dim=-1).numpy()  # (n, C), fp32 as the logits
        ids = part.argmax(-1)  # the GLUE path's class ids
        yield from ({"label": labels[int(i)], "probabilities": {lab: float(p) for lab, p in zip(labels, row)}}
                    for i, row in zip(ids, probs))


def prediction_records(task: TaskDef, logits: np.ndarray) -> list[dict[str, Any]]:
    """One dict per row: ``{"label", "probabilities": {label: p}}``, or ``{"score"}`` for regression."""
    return list(iter_prediction_records(task, logits))


class Predictor:
    """A trained run ready to predict: its model (eval mode, on ``device``), tokenizer and tasks."""

    def __init__(self, model: MultiTaskModel, tokenizer, max_len: int, device: torch.device,
                 batch_size: int = 128, precision: str = "fp32", source: str = "",
                 reads: Sequence[tuple[str, Path]] = ()):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.source = source
        self.reads = list(reads)  # (what, path) of the files the model came from: an output must be none of them
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # tasks predicted by one of this model's heads without their own (AX by MNLI's) join the run's tasks
        for name, task in load_task_defs().items():
            if task.head and task.head in model.heads and name not in model.task_defs:
                model.task_defs[name] = task

    @property
    def tasks(self) -> list[str]:
        return list(self.model.task_defs)

    def task(self, name: str) -> TaskDef:
        if name not in self.model.task_defs:
            raise ConfigError(f"{self.source or 'this model'} has no task {name!r} (it has {', '.join(self.tasks)})")
        return self.model.task_defs[name]

    def logits(self, task: str, examples: Iterable[Example], where: str = "input") -> tuple[Features, np.ndarray]:
        """The rows' features (flat arrays; their ``indices`` are the rows' ids) and logits (N, C), in row order.

        ``examples`` may be a file being read: it is tokenized in chunks and never held whole.
        """
        tdef = self.task(task)
        split = SplitDef(name=where, kind="test", file=where)
        feats = tokenize_examples(self.tokenizer, tdef, split, examples, self.max_len)
        if not len(feats):
            return feats, np.zeros((0, 1), dtype=np.float32)
        return feats, predict_logits(self.model, feats, self.batch_size, self.device, self.pad_id, self.precision)

    def predict_examples(self, task: str, examples: Iterable[Example], where: str = "input") -> list[dict[str, Any]]:
        """Predictions for rows already read (``Example``: text_a, text_b), in their order."""
        _, logits = self.logits(task, examples, where)
        return prediction_records(self.task(task), logits)

    def predict(self, task: str, rows: Iterable[Row]) -> list[dict[str, Any]]:
        """Predictions for ``rows``: strings for single-sentence tasks, (sentence, sentence) pairs for pair
        tasks. Returns one dict per row: ``{"label", "probabilities"}`` or ``{"score"}`` (regression)."""
        tdef = self.task(task)
        want = 2 if tdef.text_b else 1
        examples = []
        for i, row in enumerate(rows):
            texts = [row] if isinstance(row, str) else list(row)
            if len(texts) != want or not all(isinstance(t, str) for t in texts):
                raise DataError(f"row {i}: task {task} takes {'a pair of strings' if want == 2 else 'one string'}"
                                f", got {row!r}"[:200])
            if not all(t.strip() for t in texts):
                raise DataError(f"row {i}: empty text")
            where = next(filter(None, map(lone_surrogate, texts)), None)
            if where:
                raise DataError(f"row {i}: {where} is not text")
            examples.append(Example(texts[0], texts[1] if want == 2 else None, None, str(i), i + 1))
        return self.predict_examples(task, examples)


def load_run(path: str | Path, device: str = "auto", batch_size: int = 128, precision: str = "fp32",
             max_seq_len: int | None = None) -> Predictor:
    """A run folder (its ``best/`` model) or a saved model folder, ready to predict on ``device``
    (``auto``: CUDA when available) with ``max_seq_len`` tokens per row (default: the run's own, else 128).

    What the GLUE path refuses is refused here too, as one-line :class:`ConfigError`: a device this machine
    lacks (before anything loads), a damaged run ``config.json``, a ``max_seq_len`` past the encoder's
    position table.
    """
    dev = pick_device(device)
    model_dir = find_model_dir(path)
    max_len = run_max_len(model_dir, max_seq_len)
    model, tokenizer, _ = load_model(path)  # the model whole, even while a training replaces best/
    check_encoder_fits(model.encoder.config, tokenizer, model.task_defs.values(), max_len, name=str(model_dir))
    return Predictor(model, tokenizer, max_len, dev, batch_size, precision, source=str(path),
                     reads=files_read(model_dir))


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """Write strict JSON lines (no NaN or Infinity) to ``path`` atomically: never a half-written file (stdout,
    a device or a pipe are written into, see :func:`data_utils.output_paths.open_output`)."""
    with open_output(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")


def predict_file(predictor: Predictor, task: str, input_path: str | Path, output_path: str | Path,
                 text_a: str | None = None, text_b: str | None = None, id_column: str | None = None,
                 fmt: str = "auto") -> int:
    """Predict every row of a TSV/JSON-lines file; write ``{"id", "label", "probabilities"}`` (or ``"score"``)
    per row to ``output_path`` (JSON lines, atomically). Returns the number of rows.

    ``output_path`` is checked first: a folder, a place that cannot be written, the input or a file the model
    came from is a one-line :class:`ConfigError`."""
    check_output_file(output_path, [("the input", Path(input_path)), *predictor.reads])
    columns = task_columns(predictor.task(task), text_a, text_b, id_column)
    # read and tokenized a chunk at a time (a bad row stops everything before the output is opened); the
    # records are made and written as they go: memory holds the flat features and logits, never all records
    feats, logits = predictor.logits(task, iter_user_rows(input_path, columns, fmt), where=Path(input_path).name)
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if len(bad):  # JSON has no NaN: a broken model (or an fp16 overflow) is an error, not an invalid file
        raise DataError(f"{input_path}: the model's output is not a finite number for {len(bad)} row(s) (first: "
                        f"id {feats.indices[bad[0]]!r}); nothing written to {output_path}")
    records = iter_prediction_records(predictor.task(task), logits)
    write_jsonl_atomic(output_path, ({"id": i, **r} for i, r in zip(feats.indices, records)))
    logger.info("%s: %d rows predicted with %s (%s) -> %s", input_path, len(feats), predictor.source, task,
                output_path)
    return len(feats)
