"""The typed configuration of a training run (``TrainConfig``), saved as ``config.json`` next to its outputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_utils.glue import BAD_ROWS
from data_utils.task_def import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamax")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` next to its outputs."""

    tasks: str = "rte"
    method: str = "standard"
    method_options: dict[str, Any] = field(default_factory=dict)
    glue_dir: str = "glue_data"
    output_dir: str = "runs/run"
    model: str | None = None  # hub name or local path; None = the packaged all-MiniLM-L6-v2
    task_def: list[str] = field(default_factory=list)
    cache_dir: str | None = None  # default: <output_dir>/../.cache/features
    bad_rows: str = "error"  # malformed rows in train/dev files: error | skip (dropped, one warning)
    max_seq_len: int = 128
    max_train_samples: int | None = None
    pooling: str = "auto"  # auto (follow the checkpoint) | cls | mean
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-4  # measured best for the packaged MiniLM (RESULTS.md §1, §8); the paper used 2e-5 for BERT-base
    weight_decay: float = 0.01
    warmup: float = 0.1
    clip: float = 1.0
    optimizer: str = "adamw"
    seed: int = 1
    no_eval: bool = False
    task_sampling: str = "proportional"
    sampling_temperature: float = 2.0
    precision: str = "fp32"
    grad_accumulation_steps: int = 1
    init_checkpoint: str | None = None
    max_bad_steps: int = 10
    save_every_steps: int | None = None
    resume: bool = False  # continue the run in output_dir; refused if a result-changing setting differs
    overwrite: bool = False  # replace the run in output_dir (neither flag: a folder holding a run is an error)
    log_every: int = 50
    device: str = "auto"
    world_size: int = 1

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)
        need(self.precision in PRECISIONS, f"--precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        need(self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        need(self.bad_rows in BAD_ROWS, f"--bad_rows {self.bad_rows!r}; choose one of {', '.join(BAD_ROWS)}")
        need(self.pooling in ("auto", "cls", "mean"), f"--pooling {self.pooling!r}; choose one of auto, cls, mean")
        need(self.batch_size >= 1, "--batch_size must be >= 1")
        need(self.eval_batch_size >= 1, "--eval_batch_size must be >= 1")
        need(self.epochs >= 1 or (self.max_steps or 0) > 0, "--epochs must be >= 1 (or give --max_steps)")
        need(self.max_steps is None or self.max_steps >= 1, "--max_steps must be >= 1")
        need(self.lr > 0, "--lr must be > 0")
        need(0.0 <= self.warmup < 1.0, "--warmup is a fraction of the steps in [0, 1)")
        need(self.grad_accumulation_steps >= 1, "--grad_accumulation_steps must be >= 1")
        need(self.max_seq_len >= 8, "--max_seq_len must be >= 8")
        need(self.max_train_samples is None or self.max_train_samples >= 1, "--max_train_samples must be >= 1")
        need(self.sampling_temperature > 0, "--sampling_temperature must be > 0")
        need(self.save_every_steps is None or self.save_every_steps >= 1, "--save_every_steps must be >= 1")
        need(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other (--resume "
             "continues the run in --output_dir, --overwrite replaces it)")
        need(self.task_sampling in ("proportional", "uniform", "temperature"),
             f"--task_sampling {self.task_sampling!r}; choose one of proportional, uniform, temperature")
