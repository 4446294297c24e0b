"""The typed configuration of a training run (``TrainConfig``), saved as ``config.json`` next to its outputs."""
from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data_utils.glue import BAD_ROWS
from data_utils.task_def import ConfigError
from mt_dnn.flags import check_fields, setting

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamax")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
PACKAGED_LR = 1e-4  # measured best for the packaged MiniLM (README)
PAPER_LR = 2e-5  # the paper's rate for BERT-base: the default for every other encoder


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` next to its outputs. Each field made by ``setting`` is a
    flag of ``mt_dnn.train`` (its help text, choices and valid range are declared here)."""

    tasks: str = setting("rte", "comma-separated task names (cola, sst, mrpc, stsb, qqp, mnli, qnli, rte, wnli, "
                                "or --task_def ones)")
    method: str = setting("standard", "training method (regularizer)")  # choices: the registered methods
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's Options, by field name
    glue_dir: str = setting("glue_data", "folder with the GLUE task folders (default: $GLUE_DIR, else ./glue_data)")
    output_dir: str = setting("runs/run", "run folder: config.json, metrics.jsonl, train.log, best/ "
                                          "(default: runs/<tasks joined by +>-<method>-s<seed>, e.g. "
                                          "runs/rte+mrpc-rapt-s1)")
    model: str | None = setting(None, "encoder: a hub name or a local path (default: the packaged all-MiniLM-L6-v2)")
    task_def: list[str] = setting([], "extra YAML task definitions (adds or overrides tasks; repeatable)")
    cache_dir: str | None = setting(None, "feature cache folder (default: <output_dir>/../.cache/features; never "
                                          "inside GLUE_DIR)")
    robustness_dir: str | None = setting(None, "folder of the robustness sets' files (AdvGLUE's dev.json), scored "
                                               "at every evaluation beside dev and never used to choose anything "
                                               "(default: $ROBUSTNESS_DIR, else an advglue folder beside the GLUE "
                                               "folder; none found: skipped with one warning)")
    bad_rows: str = setting("error", "a malformed row in a train/dev file (wrong field count, unknown label, bad "
                                     "score): error stops with file:line; skip drops such rows with one warning "
                                     "(test files are always strict)", choices=BAD_ROWS)
    max_seq_len: int = setting(128, "truncate inputs to this many tokens", ge=8)
    max_train_samples: int | None = setting(None, "train on a seeded random subset of this many rows per task "
                                                  "(quick runs)", ge=1)
    max_eval_samples: int | None = setting(None, "score only the first N rows of each dev split and of each robustness "
                                                 "set (quick runs: the scores, and the evaluation that picks best/, "
                                                 "are that slice's, not the dev set's)", ge=1)
    pooling: str = setting("auto", "sentence vector: auto follows the checkpoint (sentence-transformers: mean; "
                                   "else [CLS])", choices=("auto", "cls", "mean"))
    lora_rank: int = setting(0, "train LoRA adapters of this rank on the encoder instead of all its weights (peft: "
                                "W x + (alpha / rank) B A x on --lora_target_modules; the rest of the encoder is "
                                "frozen, the task heads train fully; best/ holds the merged weights); 0: full "
                                "fine-tuning. LoRA usually wants a higher --lr (e.g. 1e-3)", ge=0)
    lora_alpha: float = setting(16.0, "LoRA scaling: the adapters' update is (alpha / rank) B A x", gt=0)
    lora_dropout: float = setting(0.1, "dropout on the LoRA adapters' input", ge=0, lt=1)
    lora_target_modules: str | None = setting(None, "comma-separated names of the encoder's linear layers that get "
                                                    "LoRA adapters (default: the attention query and value "
                                                    "projections: query,value for BERT, RoBERTa and ELECTRA; "
                                                    "query_proj,value_proj for DeBERTa-v2; q_lin,v_lin for "
                                                    "DistilBERT)")
    epochs: int = setting(3, "training epochs (one epoch = one pass over every task's batches)", ge=0)
    max_steps: int | None = setting(None, "stop after this many optimizer steps (overrides --epochs; evaluates at "
                                          "the end)", ge=1)
    batch_size: int = setting(32, "rows per batch (per process)", ge=1)
    eval_batch_size: int = setting(128, "rows per evaluation batch", ge=1)
    # None: resolve_lr (1e-4 for the packaged MiniLM, else 2e-5); config.json: the value used
    lr: float | None = setting(None, "peak learning rate (default: 1e-4 for the packaged MiniLM, 2e-5 for any "
                                     "other encoder, as in the paper)", gt=0)
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases and LayerNorm)", ge=0)
    warmup: float = setting(0.1, "fraction of steps with linear warm-up, then linear decay to 0", ge=0, lt=1)
    clip: float = setting(1.0, "gradient norm clipping", gt=0)
    optimizer: str = setting("adamw", "optimizer", choices=OPTIMIZERS)
    seed: int = setting(1, "random seed (data order, dropout, noise, RAPT's layer draws)", ge=0, le=2**32 - 1)
    no_eval: bool = setting(False, "skip dev evaluation (the final model is saved as best/)")
    task_sampling: str = setting("proportional", "how multi-task batches are mixed: proportional (every batch "
                                                 "once per epoch), uniform, temperature (p ~ n^(1/T))",
                                 choices=("proportional", "uniform", "temperature"))
    sampling_temperature: float = setting(2.0, "T for --task_sampling temperature", ge=0.1)
    group_by_length: bool = setting(False, "training batches of rows of similar length (less padding, faster "
                                           "steps; another batch order, so other numbers): each task's shuffled "
                                           "rows are cut into groups of 50 batches, sorted by length within a group")
    precision: str = setting("fp32", "fp32, or bf16/fp16 autocast (regularizer divergences stay fp32)",
                             choices=PRECISIONS)
    grad_accumulation_steps: int = setting(1, "micro-batches per optimizer step", ge=1)
    init_checkpoint: str | None = setting(None, "start from a trained run (its encoder and the heads of matching "
                                                "tasks)")
    max_bad_steps: int = setting(10, "stop after this many consecutive non-finite steps", ge=1)
    save_every_steps: int | None = setting(None, "write a resumable checkpoint/ every N steps (and at each epoch "
                                                 "end)", ge=1)
    resume: bool = setting(False, "continue the run in --output_dir from its checkpoint exactly (bit-identical on "
                                  "CPU with the same --threads); refused if a result-changing setting differs; no "
                                  "checkpoint = fresh start")
    overwrite: bool = setting(False, "replace the run in --output_dir (its checkpoint included); without --resume "
                                     "or --overwrite a folder holding another run is an error")
    log_every: int = setting(50, "log every N steps the mean task and regularizer loss over all steps so far",
                             ge=1)
    device: str = setting("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    tf32: bool = setting(True, "on CUDA, keep float32 matmuls in full fp32 instead of TF32 (TF32 is the default on "
                               "GPUs: several times faster on Ampere and newer, results differ in the last digits; "
                               "no effect on CPU)")
    compile: str = setting("none", "torch.compile the model: none, default, reduce-overhead (CUDA graphs: for "
                                   "small encoders, whose GPU steps wait on kernel launches) or max-autotune; "
                                   "the first steps compile, results differ in the last digits; --method "
                                   "standard only (the other methods' noise hooks would not run)",
                           choices=COMPILE_MODES)
    world_size: int = 1

    def validate(self, given: Collection[str] | None = None) -> None:
        """Every field against its declaration (type, choices, range), then the settings that exclude each other.
        ``given``: the settings the user gave (flags, --config): one given for a setting it does not apply to is
        refused even at its default value; without it, only values other than the defaults can be seen."""
        check_fields(self)
        defaults = {f.name: f.default for f in fields(self)}

        def set_(name: str) -> bool:
            return name in given if given is not None else getattr(self, name) != defaults[name]

        if self.epochs < 1 and not self.max_steps:
            raise ConfigError("--epochs must be >= 1 (or give --max_steps)")
        if not self.lora_rank:  # a LoRA setting without LoRA would silently do nothing
            lora = [f for f in ("lora_alpha", "lora_dropout", "lora_target_modules") if set_(f)]
            if lora:
                raise ConfigError(f"--{lora[0]} only applies with --lora_rank >= 1 (LoRA adapters); without it "
                                  "the whole encoder is fine-tuned")
        if self.task_sampling != "temperature" and set_("sampling_temperature"):
            raise ConfigError(f"--sampling_temperature only applies with --task_sampling temperature (this run has "
                              f"--task_sampling {self.task_sampling})")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other (--resume continues the run in "
                              "--output_dir, --overwrite replaces it)")
        if self.init_checkpoint and self.model not in (None, ""):
            raise ConfigError("--model and --init_checkpoint both name the encoder: --init_checkpoint trains the "
                              "encoder of that run; give one of them")


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
