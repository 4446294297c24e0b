"""The typed configuration of a training run (``TrainConfig``), saved as ``config.json`` next to its outputs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_utils.glue import BAD_ROWS
from data_utils.task_def import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamax")
PACKAGED_LR = 1e-4  # measured best for the packaged MiniLM (README)
PAPER_LR = 2e-5  # the paper's rate for BERT-base: the default for every other encoder


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
    lr: float | None = None  # None: resolve_lr (1e-4 for the packaged MiniLM, else 2e-5); config.json: the value used
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
    tf32: bool = True  # CUDA only: TF32 matmuls (fp32 range, 10-bit mantissa); --no_tf32 keeps full fp32
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
        need(self.lr is None or self.lr > 0, "--lr must be > 0")
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


# the encoder config keys that tell the packaged MiniLM's architecture from another encoder's
_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "vocab_size")


def _packaged_config() -> dict | None:
    from mt_dnn.model import default_model_path

    try:
        return json.loads((Path(default_model_path()) / "config.json").read_text())
    except (ConfigError, OSError, ValueError):  # the package is not installed (or unreadable): nothing is it
        return None


def is_packaged_encoder(cfg: TrainConfig) -> bool:
    """Whether the run trains the packaged all-MiniLM-L6-v2: no --model (or its name or folder), or an
    --init_checkpoint whose encoder has the packaged one's architecture (it was fine-tuned from it)."""
    from mt_dnn.model import DEFAULT_MODEL, default_model_path, find_model_dir

    if cfg.init_checkpoint:
        packaged = _packaged_config()
        path = find_model_dir(cfg.init_checkpoint) / "encoder" / "config.json"
        try:
            mine = json.loads(path.read_text())
        except (OSError, ValueError):
            return False  # loading the checkpoint reports it
        return packaged is not None and all(mine.get(k) == packaged.get(k) for k in _ARCH_KEYS)
    if cfg.model in (None, "", DEFAULT_MODEL):
        return True
    if not Path(cfg.model).exists():
        return False  # a hub name
    try:
        return Path(cfg.model).resolve() == Path(default_model_path()).resolve()
    except ConfigError:
        return False


def resolve_lr(cfg: TrainConfig) -> tuple[float, str]:
    """(peak learning rate, where it comes from): --lr when given; else 1e-4 for the packaged MiniLM (the
    measured best) and 2e-5 (the paper's, for BERT-base) for every other encoder."""
    if cfg.lr is not None:
        return cfg.lr, "--lr"
    if is_packaged_encoder(cfg):
        return PACKAGED_LR, "the default for the packaged MiniLM"
    return PAPER_LR, "the default for encoders other than the packaged MiniLM"
