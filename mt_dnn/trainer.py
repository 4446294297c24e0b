"""One Trainer: setup / train / evaluate / save. One explicit loop, no callbacks.

The step: forward (clean pass, regularizer) under autocast -> loss / accumulation -> backward -> (after the
last micro-step) unscale, clip, optimizer step, scheduler step, zero_grad(set_to_none=True).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data_utils.batching import MultiTaskSampler, collate, eval_batches
from data_utils.encoder_limits import check_encoder_fits
from data_utils.features import Features, load_features, save_pending, tokenizer_fingerprint
from data_utils.glue import BAD_ROWS
from data_utils.metrics import compute_metrics
from data_utils.task_def import ConfigError, TaskDef, load_task_defs, select_tasks
from mt_dnn import losses
from mt_dnn.model import (MultiTaskModel, checkpoint_pooling, find_model_dir, load_encoder, load_model, resolve_model,
                          save_model, swap_in)
from mt_dnn.perturbation import Regularizer, build_regularizer

logger = logging.getLogger(__name__)

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
    lr: float = 1e-4  # measured best for the packaged MiniLM (README); the paper used 2e-5 for BERT-base
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
    resume: bool = False
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
        need(self.task_sampling in ("proportional", "uniform", "temperature"),
             f"--task_sampling {self.task_sampling!r}; choose one of proportional, uniform, temperature")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """torch.amp autocast for bf16/fp16; a no-op context for fp32."""
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class TrainStep(nn.Module):
    """The whole regularized step as one module call (one forward per backward under DDP).

    forward(batch) -> (loss, task_loss, reg_loss, logs): loss = task_loss + alpha * reg_loss.
    """

    def __init__(self, model: MultiTaskModel, reg: Regularizer):
        super().__init__()
        self.model = model
        self.reg = reg

    def forward(self, batch: dict):
        task = self.model.task_defs[batch["task"]]
        with self.reg.clean_pass(self.model, batch):
            logits = self.model(batch)
        task_loss = losses.task_loss(task, logits, batch["labels"])
        reg_loss, logs = self.reg(self.model, batch, logits)
        return task_loss + self.reg.alpha * reg_loss, task_loss.detach(), reg_loss.detach(), logs


@torch.no_grad()
def predict(model: MultiTaskModel, features: Features, batch_size: int, device: torch.device, pad_id: int,
            precision: str = "fp32", rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Predictions for every row of ``features`` in file order: class ids (N,) or scores (N,).

    Rows are batched by length (little padding); no gradients; the model is put in eval mode. Under DDP each
    rank predicts rows rank::world_size and the shards are gathered, so every row is predicted exactly once.
    """
    was_training = model.training
    model.eval()
    task = model.task_defs[features.task]
    regression = task.type == "regression"
    out = np.zeros(len(features), dtype=np.float64 if regression else np.int64)
    mine: list[int] = []
    for rows in eval_batches(features, batch_size, rank, world_size):
        batch = to_device(collate(features, rows, pad_id, regression), device)
        with autocast(device, precision):
            logits = model(batch).float()
        out[rows] = (logits.squeeze(-1) if regression else logits.argmax(-1)).cpu().numpy()
        mine.extend(rows)
    if world_size > 1:
        shards: list = [None] * world_size
        torch.distributed.all_gather_object(shards, (mine, out[mine].tolist()))
        for rows, values in shards:
            out[rows] = values
    model.train(was_training)
    return out


def init_distributed(device: str) -> tuple[int, int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1: nccl on GPUs, gloo on CPU. Returns (rank, world, local)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


class Trainer:
    """setup() loads data and model; train() runs the loop; evaluate() scores every dev split."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.rank, self.world_size, local_rank = init_distributed(cfg.device)
        cfg.world_size = self.world_size
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self.resumed = False
        self._evaluated_epoch: int | None = None
        self.step = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        self.best_score = -math.inf
        self.train_seconds = 0.0
        self.loss_sum = 0.0
        self.reg_sum = 0.0
        self.loss_count = 0

    # ---- setup ------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        all_tasks = load_task_defs(cfg.task_def)
        self.tasks: list[TaskDef] = select_tasks(all_tasks, cfg.tasks)
        for t in self.tasks:
            if not t.splits_of("train"):
                raise ConfigError(f"task {t.name} has no train split (it is predicted by the {t.head_name} head)")
        self.reg = build_regularizer(cfg.method, cfg.method_options, cfg.seed)
        if cfg.init_checkpoint:
            model, self.tokenizer, _ = self._init_from_checkpoint(cfg.init_checkpoint)
        else:
            model_path = resolve_model(cfg.model)
            encoder, self.tokenizer = load_encoder(model_path)
            pooling = checkpoint_pooling(model_path) if cfg.pooling == "auto" else cfg.pooling
            model = MultiTaskModel(encoder, self.tasks, pooling)
        self.model = model.to(self.device)
        self.reg.check(self.model)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        source = f"{cfg.init_checkpoint} (--init_checkpoint)" if cfg.init_checkpoint else resolve_model(cfg.model)
        logger.info("encoder %s: %d layers, pooling %s, %.1fM parameters", source,
                    self.model.num_layers, self.model.pooling,
                    sum(p.numel() for p in self.model.parameters()) / 1e6)
        check_encoder_fits(self.model.encoder.config, self.tokenizer, self.tasks, cfg.max_seq_len, source)
        self._load_data()
        self.step_module = TrainStep(self.model, self.reg)
        self.wrapped: nn.Module = self.step_module
        if self.world_size > 1:  # the whole regularized step is one forward of the wrapped module
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                               find_unused_parameters=True)
        self.sampler = MultiTaskSampler({t: len(f) for t, f in self.train_data.items()}, cfg.batch_size, cfg.seed,
                                        cfg.task_sampling, cfg.sampling_temperature, self.rank, self.world_size)
        micro_per_epoch = self.sampler.steps_per_epoch()
        self.steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accumulation_steps)
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        self.optimizer = self._build_optimizer()
        from transformers import get_linear_schedule_with_warmup
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(cfg.warmup * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        logger.info("%d optimizer steps (%d per epoch), batch %d x %d processes, method %s", self.total_steps,
                    self.steps_per_epoch, cfg.batch_size, self.world_size, cfg.method)
        if cfg.resume:
            ckpt = self.find_checkpoint()
            if ckpt is None:
                logger.info("--resume: no checkpoint in %s, starting from scratch", self.out)
            else:
                self.load_checkpoint(ckpt)
        if self.world_size > 1 and not self.resumed:  # dropout and noise differ by rank; data order does not
            torch.manual_seed(cfg.seed * 1000 + self.rank)

    def _init_from_checkpoint(self, path: str):
        """Encoder and matching heads from a trained run (``RUN_DIR`` or ``RUN_DIR/best``); new heads for the rest."""
        d = find_model_dir(path)
        old, tokenizer, _ = load_model(d)
        model = MultiTaskModel(old.encoder, self.tasks, old.pooling if self.cfg.pooling == "auto" else self.cfg.pooling)
        for name in model.heads:
            if name in old.heads and old.heads[name].out.weight.shape == model.heads[name].out.weight.shape:
                model.heads[name].load_state_dict(old.heads[name].state_dict())
                logger.info("head %s initialised from %s", name, d)
        return model, tokenizer, None

    def _load_data(self) -> None:
        cfg = self.cfg
        cache = cfg.cache_dir or str(self.out.parent / ".cache" / "features")
        fp = tokenizer_fingerprint(self.tokenizer)
        self.train_data: dict[str, Features] = {}
        self.dev: list[Features] = []
        pending: list = []  # cache files are written only once every split has been read without error
        for t in self.tasks:
            feats = load_features(cfg.glue_dir, t, t.splits_of("train")[0], self.tokenizer, cfg.max_seq_len, cache, fp,
                                  pending, cfg.bad_rows)
            if cfg.max_train_samples and cfg.max_train_samples < len(feats):
                rng = np.random.default_rng([cfg.seed, 0x5EED])
                feats = feats.subset(sorted(rng.choice(len(feats), cfg.max_train_samples, replace=False).tolist()))
            self.train_data[t.name] = feats
            if not cfg.no_eval:
                for s in t.splits_of("dev"):
                    self.dev.append(load_features(cfg.glue_dir, t, s, self.tokenizer, cfg.max_seq_len, cache, fp,
                                                  pending, cfg.bad_rows))
            logger.info("task %s: %d training rows", t.name, len(feats))
        if self.is_main:
            save_pending(pending)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.cfg.optimizer == "adamax":
            return torch.optim.Adamax(groups, lr=self.cfg.lr)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    # ---- outputs ----------------------------------------------------------------------------------------

    def write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self.cfg)
        data["resolved_model"] = resolve_model(self.cfg.model)
        data["resolved_pooling"] = self.model.pooling
        data["method_options"] = dataclasses.asdict(self.reg.options)
        data["steps_per_epoch"] = self.steps_per_epoch
        data["total_steps"] = self.total_steps
        data["torch"] = torch.__version__
        (self.out / "config.json").write_text(json.dumps(data, indent=2, default=str))

    def log_metrics(self, record: dict) -> None:
        if self.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- evaluation -------------------------------------------------------------------------------------

    def evaluate(self, epoch: int) -> float:
        """Score every dev split; append one record per split; returns the mean primary metric over tasks."""
        primaries: dict[str, list[float]] = {}
        for feats in self.dev:
            task = self.model.task_defs[feats.task]
            preds = predict(self.model, feats, self.cfg.eval_batch_size, self.device, self.pad_id, self.cfg.precision,
                            self.rank, self.world_size)
            metrics = compute_metrics(task.metrics, preds, feats.labels)
            self.log_metrics({"epoch": epoch, "step": self.step, "task": task.name, "split": "dev",
                              "split_name": feats.split, "method": self.cfg.method, "seed": self.cfg.seed,
                              "train_seconds": round(self.train_seconds, 3), "metrics": metrics})
            logger.info("epoch %d step %d  %s %s: %s", epoch, self.step, task.name, feats.split,
                        "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            primaries.setdefault(task.name, []).append(metrics[task.primary_metric])
        return float(np.mean([np.mean(v) for v in primaries.values()])) if primaries else float("nan")

    def maybe_save_best(self, score: float, epoch: int) -> None:
        if score > self.best_score:  # every rank holds the same gathered predictions, hence the same score
            self.best_score = score
            if not self.is_main:
                return
            save_model(self.model, self.tokenizer, self.tasks, self.out / "best",
                       {"epoch": epoch, "step": self.step, "score": score, "method": self.cfg.method})
            logger.info("new best dev score %.4f at epoch %d (saved to %s)", score, epoch, self.out / "best")

    # ---- training -----------------------------------------------------------------------------------------

    def train_step(self, micro: list[tuple[str, list[int]]]) -> bool:
        """One optimizer step over ``micro`` (the accumulation micro-batches). False if skipped (non-finite)."""
        cfg = self.cfg
        n = len(micro)
        finite = True
        tl_sum = rl_sum = 0.0
        logs_last: dict[str, float] = {}
        for k, (task, rows) in enumerate(micro):
            feats = self.train_data[task]
            batch = to_device(collate(feats, rows, self.pad_id, self.model.task_defs[task].type == "regression"),
                              self.device)
            self.reg.step, self.reg.micro = self.step, k
            # under DDP, gradients are all-reduced only on the last micro-step
            sync = k == n - 1 or not hasattr(self.wrapped, "no_sync")
            with (contextlib.nullcontext() if sync else self.wrapped.no_sync()):
                with autocast(self.device, cfg.precision):
                    loss, tl, rl, logs = self.wrapped(batch)
                loss = self.fault(loss, self.step)
                if not torch.isfinite(loss):
                    finite = False
                    break
                self.scaler.scale(loss / n).backward()
            tl_sum += float(tl)
            rl_sum += float(rl)
            logs_last = logs
        if self.world_size > 1:  # every rank must agree to skip, or the ranks' weights would drift apart
            flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = bool(flag.item())
        if finite:
            self.scaler.unscale_(self.optimizer)
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
            finite = bool(torch.isfinite(gnorm)) or cfg.precision == "fp16"  # fp16: GradScaler skips and rescales
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.loss_sum += tl_sum / n
            self.reg_sum += rl_sum / n
            self.loss_count += 1
            self.last_logs = logs_last
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    def fault(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Test hooks: ``MT_DNN_NAN_AT_STEP=k[,j]`` makes the first attempt at step k a NaN loss;
        ``MT_DNN_NAN_FROM_STEP=k`` makes every attempt from step k on NaN (exercises --max_bad_steps)."""
        once = os.environ.get("MT_DNN_NAN_AT_STEP")
        always = os.environ.get("MT_DNN_NAN_FROM_STEP")
        fired = self.__dict__.setdefault("_faulted", set())
        if once is not None and step in {int(x) for x in once.split(",")} and step not in fired:
            fired.add(step)
            return loss * float("nan")
        if always is not None and step >= int(always):
            return loss * float("nan")
        return loss

    def _after_step(self, ok: bool) -> None:
        if not ok:
            self.bad_steps += 1
            self.skipped_steps += 1
            logger.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)",
                           self.step, self.bad_steps)
            if self.bad_steps >= self.cfg.max_bad_steps:
                raise ConfigError(f"{self.bad_steps} consecutive non-finite steps (--max_bad_steps "
                                  f"{self.cfg.max_bad_steps}); stopping, last good checkpoint kept. "
                                  "Lower --lr or use --precision fp32.")
            return
        self.bad_steps = 0
        self.step += 1
        self.bar.update(1)
        if os.environ.get("MT_DNN_STEP_DELAY"):  # test hook: slow a run down so a test can kill it mid-way
            time.sleep(float(os.environ["MT_DNN_STEP_DELAY"]))
        if self.step % self.cfg.log_every == 0 and self.loss_count:
            extra = " ".join(f"{k} {v:.4g}" for k, v in self.last_logs.items())
            logger.info("step %d/%d loss %.4f reg %.4f lr %.2e %s", self.step, self.total_steps,
                        self.loss_sum / self.loss_count, self.reg_sum / self.loss_count,
                        self.scheduler.get_last_lr()[0], extra)
            self.bar.set_postfix(loss=f"{self.loss_sum / self.loss_count:.4f}")
        if self.cfg.save_every_steps and self.step % self.cfg.save_every_steps == 0 and self.step < self.total_steps:
            self.save_checkpoint()

    def train(self) -> dict:
        """The loop: epochs of the sampler's plan, one optimizer step per ``grad_accumulation_steps`` batches."""
        cfg = self.cfg
        if self.is_main:
            self.write_config()
            if not self.resumed:
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.model.train()
        self.last_logs: dict[str, float] = {}
        from tqdm import tqdm
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.method} {cfg.tasks}",
                        disable=not self.is_main or os.environ.get("MT_DNN_NO_TQDM") is not None,
                        dynamic_ncols=True)
        epoch = self.sampler.state.epoch
        while self.step < self.total_steps:
            epoch = self.sampler.state.epoch
            micro: list[tuple[str, list[int]]] = []
            for task, rows in self.sampler:  # continues from the sampler's position (resume)
                micro.append((task, rows))
                if len(micro) == cfg.grad_accumulation_steps:
                    self._after_step(self._timed_step(micro))
                    micro = []
                    if self.step >= self.total_steps:
                        break
            else:  # the epoch ran to its end
                if micro:  # a last, shorter accumulation
                    self._after_step(self._timed_step(micro))
                self._end_epoch(epoch)
                continue
            break  # --max_steps reached inside an epoch
        self.bar.close()
        if self.sampler.state.position > 0 or self._evaluated_epoch != epoch:
            self._end_epoch(epoch, save=False)  # a --max_steps run: evaluate where it stopped
        if self.cfg.no_eval and self.is_main:  # nothing to compare: the final model is the one to keep
            save_model(self.model, self.tokenizer, self.tasks, self.out / "best",
                       {"epoch": epoch, "step": self.step, "score": None, "method": cfg.method})
        record = {"epoch": epoch, "step": self.step, "task": cfg.tasks, "split": "train", "method": cfg.method,
                  "seed": cfg.seed, "train_seconds": round(self.train_seconds, 3), "steps": self.step,
                  "skipped_steps": self.skipped_steps,
                  "loss": self.loss_sum / max(self.loss_count, 1), "reg_loss": self.reg_sum / max(self.loss_count, 1)}
        self.log_metrics(record)
        logger.info("done: %d steps in %.1f s of training; mean loss %.4f, mean reg loss %.4f", self.step,
                    self.train_seconds, record["loss"], record["reg_loss"])
        return record

    def _timed_step(self, micro) -> bool:
        t0 = time.perf_counter()
        ok = self.train_step(micro)
        self.train_seconds += time.perf_counter() - t0
        return ok

    def _end_epoch(self, epoch: int, save: bool = True) -> None:
        self._evaluated_epoch = epoch
        logger.info("epoch %d ended at step %d (%.1f s of training so far)", epoch, self.step, self.train_seconds)
        if not self.cfg.no_eval:
            score = self.evaluate(epoch)
            self.maybe_save_best(score, epoch)
        if save and self.step < self.total_steps and (self.cfg.save_every_steps or self.cfg.resume):
            self.save_checkpoint()

    # ---- checkpoints ------------------------------------------------------------------------------------

    def _trainer_state(self) -> dict:
        """Everything but the weights, as tensors and plain values (loadable with weights_only=True)."""
        np_state = np.random.get_state()
        py_state = random.getstate()
        metrics = self.out / "metrics.jsonl"
        return {
            "step": self.step, "best_score": self.best_score, "train_seconds": self.train_seconds,
            "loss_sum": self.loss_sum, "reg_sum": self.reg_sum, "loss_count": self.loss_count,
            "skipped_steps": self.skipped_steps, "evaluated_epoch": self._evaluated_epoch,
            "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0,
            "sampler": self.sampler.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "rng_numpy_meta": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "rng_python": torch.tensor(py_state[1], dtype=torch.int64),
            "rng_python_gauss": py_state[2],
            "world_size": self.world_size,
            "smart_skipped": getattr(self.reg, "skipped", 0),
        }

    def save_checkpoint(self) -> None:
        """Write ``checkpoint/`` atomically: into a fresh folder, then swap it in by renames."""
        if self.world_size > 1:
            torch.distributed.barrier()
        if not self.is_main:
            return
        from safetensors.torch import save_file

        final = self.out / "checkpoint"
        tmp = self.out / f"checkpoint.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save(self._trainer_state(), tmp / "trainer_state.pt")
        swap_in(tmp, final)
        logger.info("checkpoint saved at step %d", self.step)

    def find_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: ``checkpoint/``, or ``checkpoint.old/`` if a kill hit the swap."""
        for name in ("checkpoint", "checkpoint.old"):
            d = self.out / name
            if (d / "model.safetensors").is_file() and (d / "trainer_state.pt").is_file():
                return d
        return None

    def load_checkpoint(self, d: Path) -> None:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(d / "model.safetensors")))
        st = torch.load(d / "trainer_state.pt", weights_only=True)
        if st["world_size"] != self.world_size:
            raise ConfigError(f"{d}: saved with {st['world_size']} processes, resumed with {self.world_size}")
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        self.sampler.load_state_dict(st["sampler"])
        self.step, self.best_score, self.train_seconds = st["step"], st["best_score"], st["train_seconds"]
        self.loss_sum, self.reg_sum, self.loss_count = st["loss_sum"], st["reg_sum"], st["loss_count"]
        self.skipped_steps, self._evaluated_epoch = st["skipped_steps"], st["evaluated_epoch"]
        if hasattr(self.reg, "skipped"):
            self.reg.skipped = st["smart_skipped"]
        torch.set_rng_state(st["rng_torch"])
        if st["rng_cuda"]:
            torch.cuda.set_rng_state_all(st["rng_cuda"])
        pos, has_gauss, cached = st["rng_numpy_meta"]
        np.random.set_state(("MT19937", st["rng_numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
        random.setstate((3, tuple(int(x) for x in st["rng_python"].tolist()), st["rng_python_gauss"]))
        metrics = self.out / "metrics.jsonl"
        if self.is_main and metrics.exists():  # drop records written after this checkpoint
            with open(metrics, "r+b") as f:
                f.truncate(st["metrics_bytes"])
        self.resumed = True
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", d, self.step,
                    self.sampler.state.epoch, self.sampler.state.position)
