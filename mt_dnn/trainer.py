"""One Trainer: setup / train / evaluate / save. One explicit loop, no callbacks.

The step: forward (clean pass, regularizer) under autocast -> loss / accumulation -> backward -> (after the
last micro-step) unscale, clip, optimizer step, scheduler step, zero_grad(set_to_none=True). A step with a
non-finite loss on any rank, or one GradScaler skips, is skipped on every rank and does not count. Losses and
logs stay on the device; a step reads one flag on the host (whether to skip), the rest is read when logged.

The output folder is checked (``run_folder``) before anything is loaded, and written only from
``prepare_output()`` on; checkpoints are read and written by ``checkpoint``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from data_utils import atomic
from data_utils.batching import MultiTaskSampler, collate, seeded_subset
from data_utils.encoder_limits import check_encoder_fits
from data_utils.features import Features, load_features, save_pending, tokenizer_fingerprint
from data_utils.metrics import compute_metrics
from data_utils.output_paths import check_writable_folder
from data_utils.robustness import load_sets, robustness_dir, tokenize_set
from data_utils.task_def import ConfigError, TaskDef, load_task_defs, select_tasks
from mt_dnn import checkpoint, distributed, run_folder, runtime, stop
from mt_dnn.config import OPTIMIZERS, PRECISIONS, TrainConfig, resolve_lr  # noqa: F401 (re-exported)
from mt_dnn.distributed import init_distributed
from mt_dnn.model import (MultiTaskModel, checkpoint_pooling, find_model_dir, load_encoder, load_model, resolve_model,
                          save_model)
from mt_dnn.lora import add_lora
from mt_dnn.perturbation import build_regularizer
from mt_dnn.runtime import autocast, pick_device, to_device  # noqa: F401 (re-exported)
from mt_dnn.step import TrainStep, predict  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _copy_head(name: str, old: MultiTaskModel, new: MultiTaskModel, source: Path) -> None:
    """Start ``new``'s head ``name`` from ``old``'s head of that name when both predict the same thing: the same
    task type and the same labels, matched by name (a definition that lists them in another order gets the
    head's rows reordered, so output i stays label i). Otherwise the head starts fresh, with a warning."""
    if name not in old.heads:
        logger.info("head %s: new (%s has no head of that name)", name, source)
        return
    was, now = old.task_defs[name], new.task_defs[name]  # a model's heads are those of its own tasks
    src, dst = old.heads[name].state_dict(), new.heads[name].state_dict()
    was_labels, now_labels = list(was.labels or []), list(now.labels or [])
    if was.type != now.type or sorted(was_labels) != sorted(now_labels) or \
            any(src[k].shape != dst[k].shape for k in dst):
        logger.warning("head %s: not initialised from %s, whose %s head predicts %s %s (here: %s %s); it starts "
                       "fresh", name, source, name, was.type, was_labels, now.type, now_labels)
        return
    order = [was_labels.index(label) for label in now_labels] if now_labels else None
    new.heads[name].load_state_dict({k: v[order] if order else v for k, v in src.items()})
    logger.info("head %s initialised from %s%s", name, source,
                "" if order is None or order == list(range(len(order))) else
                f" (its label rows reordered to {now_labels})")


class Trainer:
    """setup() loads data and model; train() runs the loop; evaluate() scores every dev split."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = run_folder.output_path(cfg.output_dir)
        self.rank, self.world_size, local_rank = init_distributed(cfg.device)
        cfg.world_size = self.world_size
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self.lock = run_folder.RunLock(self.out) if self.is_main else None
        self.start: run_folder.Start | None = None
        self._loaded: checkpoint.Loaded | None = None  # the checkpoint rank 0 read while checking the folder
        self._prepared = False
        self._metrics_bytes = 0
        self._skip_why = ""
        self.resumed = False
        self._evaluated_epoch: int | None = None
        self.step = 0
        self._stop = stop.StopOnSignal()
        self._stop_agreed = False  # some rank caught SIGUSR2/SIGTERM during the last step
        self.bad_steps = 0
        self.skipped_steps = 0
        self.best_score = -math.inf
        self.train_seconds = 0.0
        # this process's CPU time in the training steps (time.process_time: all its threads, not the time other
        # programs on the machine took, nor a pause); None after resuming a checkpoint that did not keep it
        self.train_cpu_seconds: float | None = 0.0
        # running sums of the task and regularizer losses over the counted steps, kept on the device so that a
        # step never waits for it; read (loss_sum, reg_sum) only when logging, saving or at the end
        self._sums = torch.zeros(2, dtype=torch.float32 if self.device.type == "mps" else torch.float64,
                                 device=self.device)
        self.loss_count = 0

    @property
    def loss_sum(self) -> float:
        return float(self._sums[0])

    @loss_sum.setter
    def loss_sum(self, value: float) -> None:
        self._sums[0] = value

    @property
    def reg_sum(self) -> float:
        return float(self._sums[1])

    @reg_sum.setter
    def reg_sum(self, value: float) -> None:
        self._sums[1] = value

    # ---- setup ------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        all_tasks = load_task_defs(cfg.task_def)
        self.tasks: list[TaskDef] = select_tasks(all_tasks, cfg.tasks)
        selected = {t.name for t in self.tasks}
        for t in self.tasks:
            if not t.splits_of("train"):
                raise ConfigError(f"task {t.name} has no train split (it is predicted by the {t.head_name} head)")
            if t.head_name not in selected:  # heads are built for the selected tasks that own them
                raise ConfigError(f"task {t.name} is predicted by the {t.head_name} head: add {t.head_name} to "
                                  "--tasks (the head is built and trained with its own task)")
            if not cfg.no_eval and not t.splits_of("dev"):
                raise ConfigError(f"task {t.name} has no dev split to evaluate on: pass --no_eval (the final model "
                                  "is then saved as best/)")
        self.reg = build_regularizer(cfg.method, cfg.method_options, cfg.seed)
        if cfg.compile != "none" and self.reg.uses_hooks:  # a compiled graph never runs hooks added later
            raise ConfigError(f"--compile {cfg.compile} works with --method standard only: {cfg.method}'s noise goes "
                              "in through hooks added at each step, which a compiled model would not run")
        given_lr = cfg.lr
        cfg.lr, why = resolve_lr(cfg)  # before the recipe: config.json and --resume see the value used
        if given_lr is None and self.is_main:
            logger.info("lr %g (%s; pass --lr to choose)", cfg.lr, why)
        tf32 = runtime.set_tf32(self.device, cfg.tf32)
        if tf32 and self.is_main:
            logger.info("%s: %s", self.device, tf32)
        # the folder is locked and checked before the model and data load; nothing is written there yet
        self.recipe = run_folder.recipe(cfg, self.tasks, dataclasses.asdict(self.reg.options), resolve_model(cfg.model))
        self.recipe["data"] = run_folder.recipe_data(cfg, self.tasks)
        # the contents of the encoder (or the run it starts from): --resume refuses one whose files changed
        self.recipe["model_files"] = run_folder.recipe_model_files(cfg)
        self.start = distributed.on_main(self._check_output_dir, self.rank, self.world_size)
        if cfg.init_checkpoint:
            model, self.tokenizer, _ = self._init_from_checkpoint(cfg.init_checkpoint)
        else:
            model_path = resolve_model(cfg.model)
            encoder, self.tokenizer = load_encoder(model_path)
            pooling = checkpoint_pooling(model_path) if cfg.pooling == "auto" else cfg.pooling
            model = MultiTaskModel(encoder, self.tasks, pooling)
        if cfg.lora_rank:  # adapters on the encoder, its other weights frozen (so left out of the optimizer)
            add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        self.model = model.to(self.device)
        self.reg.check(self.model)
        runtime.compile_model(self.model, cfg.compile)
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
            self.wrapped = runtime.wrap_ddp(self.step_module, self.device, len(self.model.heads))
        lengths = {t: np.diff(f.offsets) for t, f in self.train_data.items()} if cfg.group_by_length else None
        self.sampler = MultiTaskSampler({t: len(f) for t, f in self.train_data.items()}, cfg.batch_size, cfg.seed,
                                        cfg.task_sampling, cfg.sampling_temperature, self.rank, self.world_size,
                                        lengths)
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
        if self.start.checkpoint is not None:
            self.load_checkpoint(self._loaded or checkpoint.read_for_resume(Path(self.start.checkpoint)))
            self._loaded = None
        if self.world_size > 1 and not self.resumed:  # dropout and noise differ by rank; data order does not
            torch.manual_seed(cfg.seed * 1000 + self.rank)

    def _check_output_dir(self) -> run_folder.Start:
        check_writable_folder(self.out, f"--output_dir {self.cfg.output_dir}")  # a read-only place: one line, now
        self.lock.acquire()
        start, self._loaded = run_folder.plan_start(self.out, self.recipe, self.cfg.resume, self.cfg.overwrite)
        return start

    def _init_from_checkpoint(self, path: str):
        """Encoder and matching heads from a trained run (``RUN_DIR`` or ``RUN_DIR/best``); new heads for the rest."""
        d = find_model_dir(path)
        old, tokenizer, _ = load_model(d)
        model = MultiTaskModel(old.encoder, self.tasks, old.pooling if self.cfg.pooling == "auto" else self.cfg.pooling)
        for name in model.heads:
            _copy_head(name, old, model, d)
        return model, tokenizer, None

    def _load_data(self) -> None:
        """Under DDP the first rank of each node tokenizes and writes the feature cache; the others then read it."""
        distributed.once_per_node(self._read_data, self.world_size)

    def _read_data(self) -> None:
        cfg = self.cfg
        cache = cfg.cache_dir or str(self.out.parent / ".cache" / "features")
        fp = tokenizer_fingerprint(self.tokenizer)
        self.train_data: dict[str, Features] = {}
        self.dev: list[Features] = []
        # (task, dev split) -> [(set name, features)]: scored beside that dev split, never used to choose anything
        self.robust: dict[tuple[str, str], list[tuple[str, Features]]] = {}
        robust_folder = robustness_dir(cfg.robustness_dir, cfg.glue_dir)
        pending: list = []  # cache files are written only once every split has been read without error
        for t in self.tasks:
            feats = load_features(cfg.glue_dir, t, t.splits_of("train")[0], self.tokenizer, cfg.max_seq_len, cache, fp,
                                  pending, cfg.bad_rows)
            if cfg.max_train_samples and cfg.max_train_samples < len(feats):
                feats = feats.subset(seeded_subset(len(feats), cfg.max_train_samples, cfg.seed))
            self.train_data[t.name] = feats
            if not cfg.no_eval:
                for s in t.splits_of("dev"):
                    self.dev.append(load_features(cfg.glue_dir, t, s, self.tokenizer, cfg.max_seq_len, cache, fp,
                                                  pending, cfg.bad_rows).head(cfg.max_eval_samples))
                for rs in load_sets(t, robust_folder):
                    self.robust.setdefault((t.name, rs.dev_split), []).append(
                        (rs.set_name, tokenize_set(self.tokenizer, t, rs, cfg.max_seq_len).head(cfg.max_eval_samples)))
            logger.info("task %s: %d training rows%s", t.name, len(feats), "" if cfg.no_eval or not cfg.max_eval_samples
                        else f"; scored on the first {cfg.max_eval_samples} rows of each dev set (--max_eval_samples)")
        save_pending(pending)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return runtime.build_optimizer(self.cfg.optimizer, groups, self.cfg.lr)

    # ---- outputs ----------------------------------------------------------------------------------------

    def prepare_output(self) -> None:
        """The first writes into output_dir, once every check has passed: mark it as a run folder, remove the run
        being replaced, leftovers of killed processes, and the records written after the checkpoint being resumed;
        write config.json."""
        if self._prepared:
            return
        self._prepared = True
        if not self.is_main:
            return
        run_folder.mark(self.out)
        if self.start.clear:
            run_folder.clear_run(self.out, restart=self.start.restart)
        run_folder.remove_leftovers(self.out)
        if self.resumed:
            checkpoint.truncate_metrics(self.out / "metrics.jsonl", self._metrics_bytes)
        self.write_config()

    def close(self) -> None:
        """Release the folder's lock (and the folder itself if this run made it and wrote nothing)."""
        if self.lock is not None:
            self.lock.release()

    def write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self.cfg)
        data["run_id"] = self.start.run_id
        data["resolved_model"] = (str(find_model_dir(self.cfg.init_checkpoint) / "encoder") if self.cfg.init_checkpoint
                                  else resolve_model(self.cfg.model))
        data["resolved_pooling"] = self.model.pooling
        data["method_options"] = dataclasses.asdict(self.reg.options)
        data["steps_per_epoch"] = self.steps_per_epoch
        data["total_steps"] = self.total_steps
        data["torch"] = torch.__version__
        data["resolved_device"] = runtime.device_label(self.device)
        data["recipe"] = self.recipe  # what --resume compares (run_folder.NOT_RESULT lists what may change)
        atomic.write_json(self.out / "config.json", data, default=str)

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
            record = {"epoch": epoch, "step": self.step, "task": task.name, "split": "dev",
                      "split_name": feats.split, "rows": len(feats), "method": self.cfg.method, "seed": self.cfg.seed,
                      "train_seconds": round(self.train_seconds, 3), **self._cpu_clock(), "metrics": metrics}
            robust = {}
            for set_name, rfeats in self.robust.get((task.name, feats.split), []):
                rpreds = predict(self.model, rfeats, self.cfg.eval_batch_size, self.device, self.pad_id,
                                 self.cfg.precision, self.rank, self.world_size)
                robust[set_name] = compute_metrics(task.metrics, rpreds, rfeats.labels)
            if robust:  # logged beside the dev metrics; the score returned below is the dev splits' only
                record["robustness"] = robust
            self.log_metrics(record)
            logger.info("epoch %d step %d  %s %s: %s%s", epoch, self.step, task.name, feats.split,
                        "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                        "".join(f"  | {n} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items())
                                for n, m in robust.items()))
            primaries.setdefault(task.name, []).append(metrics[task.primary_metric])
        return float(np.mean([np.mean(v) for v in primaries.values()])) if primaries else float("nan")

    def maybe_save_best(self, score: float, epoch: int) -> None:
        if score > self.best_score:  # every rank holds the same gathered predictions, hence the same score
            self.best_score = score
            self._save_best({"epoch": epoch, "step": self.step, "score": score, "method": self.cfg.method})
            if self.is_main:
                logger.info("new best dev score %.4f at epoch %d (saved to %s)", score, epoch, self.out / "best")

    def _save_best(self, meta: dict) -> None:
        """``best/`` by rank 0, its model.json with ``meta`` and the run's max_seq_len (so a copy of it anywhere
        tokenizes as the run did); a full disk (any OSError) is a one-line error on every rank."""
        def save() -> None:
            try:
                save_model(self.model, self.tokenizer, self.tasks, self.out / "best",
                           {**meta, "max_seq_len": self.cfg.max_seq_len})
            except OSError as exc:  # a full disk: the half-written folder goes, the previous best/ stays
                shutil.rmtree(self.out / f"best.tmp-{os.getpid()}", ignore_errors=True)
                raise ConfigError(f"{self.out / 'best'}: cannot save ({checkpoint.reason(exc)})") from None
        distributed.on_main(save, self.rank, self.world_size)

    # ---- training -----------------------------------------------------------------------------------------

    def train_step(self, micro: list[tuple[str, list[int]]]) -> bool:
        """One optimizer step over ``micro`` (the accumulation micro-batches). False if skipped (non-finite).

        Every rank runs every forward and backward, even after a non-finite loss, so that DDP's gradient
        all-reduces line up on all ranks; whether to skip is then agreed by one all-reduce of a finite flag. That
        flag (losses, and the gradient norm where no GradScaler is used) is the step's one read on the host: the
        losses and the regularizer's logs stay on the device until they are logged.
        """
        cfg = self.cfg
        n = len(micro)
        finite: list[torch.Tensor] = []
        sums = torch.zeros_like(self._sums)  # (task loss, reg loss) summed over the micro-batches
        logs_last: dict = {}
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
                finite.append(torch.isfinite(loss))
                self.scaler.scale(loss / n).backward()  # NaN gradients of a skipped step are dropped below
            sums += torch.stack([tl.to(sums.dtype), rl.to(sums.dtype)])
            logs_last = logs
        scaled = self.scaler.is_enabled()  # fp16: the GradScaler unscales, and skips steps with inf/NaN gradients
        if not scaled:
            finite.append(torch.isfinite(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)))
        ok, self._stop_agreed = runtime.step_verdict(finite, self._stop.requested, self.device, self.world_size)
        self._skip_why = "non-finite loss or gradient"
        if ok and scaled:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # it found inf/NaN and skipped
                ok = False
                self._skip_why = f"fp16 gradient overflow (GradScaler lowered its scale to {self.scaler.get_scale():g})"
        elif ok:
            self.optimizer.step()
        if ok:
            self.scheduler.step()
            self._sums += sums / n
            self.loss_count += 1
            self.last_logs = logs_last
        self.optimizer.zero_grad(set_to_none=True)
        return ok

    def _count_skip(self) -> None:
        """A skipped step: counted, and the run stops after ``max_bad_steps`` of them in a row."""
        self.bad_steps += 1
        self.skipped_steps += 1
        logger.warning("step %d: %s, update skipped on every rank (%d in a row)",
                       self.step, self._skip_why, self.bad_steps)
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise ConfigError(f"{self.bad_steps} consecutive non-finite steps (--max_bad_steps "
                              f"{self.cfg.max_bad_steps}); stopping, last good checkpoint kept. "
                              "Lower --lr or use --precision fp32.")

    def _count_step(self) -> None:
        """A step taken: counted, the running loss logged every ``log_every`` steps, the periodic checkpoint."""
        self.bad_steps = 0
        self.step += 1
        self.bar.update(1)
        if self.step % self.cfg.log_every == 0 and self.loss_count:  # the same steps on every rank
            loss, reg = distributed.mean_over_ranks(self._sums / self.loss_count, self.world_size, self.device)
            extra = " ".join(f"{k} {v:.4g}" for k, v in runtime.host_floats(self.last_logs).items())
            logger.info("step %d/%d loss %.4f reg %.4f lr %.2e %s", self.step, self.total_steps, loss, reg,
                        self.scheduler.get_last_lr()[0], extra)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        if self.cfg.save_every_steps and self.step % self.cfg.save_every_steps == 0 and self.step < self.total_steps:
            self.save_checkpoint()

    def train(self) -> dict:
        """The loop: epoch after epoch from the sampler's position until the run's last step; the final record."""
        cfg = self.cfg
        self.prepare_output()
        self.model.train()
        self.last_logs: dict[str, float] = {}
        from tqdm import tqdm
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.method} {cfg.tasks}",
                        disable=not self.is_main or os.environ.get("MT_DNN_NO_TQDM") is not None,
                        dynamic_ncols=True)
        epoch = self.sampler.state.epoch
        with self._stop:  # SIGUSR2 / SIGTERM: checkpoint at the end of the step, then stop (mt_dnn.stop)
            if self.sampler.state.position == 0 and epoch > 0 and self._evaluated_epoch != epoch - 1:
                # a checkpoint that an earlier version wrote past an epoch's end before evaluating it (the shorter
                # last group of gradient accumulation): the weights are that epoch's last, so evaluate it now
                self._end_epoch(epoch - 1)
            while not self._finished():
                epoch = self._train_epoch()
        self.bar.close()
        if self.sampler.state.position > 0 or self._evaluated_epoch != epoch:
            self._end_epoch(epoch, save=False)  # a --max_steps run: evaluate where it stopped
        if self.cfg.no_eval:  # nothing to compare: the final model is the one to keep
            self._save_best({"epoch": epoch, "step": self.step, "score": None, "method": cfg.method})
        loss, reg = distributed.mean_over_ranks(self._sums / max(self.loss_count, 1), self.world_size, self.device)
        skipped = getattr(self.reg, "skipped", 0)
        if skipped and self.is_main:
            logger.warning("%s: the regularizer's term was skipped on %d step(s) (non-finite gradient norm)",
                           cfg.method, skipped)
        record = {"epoch": epoch, "step": self.step, "task": cfg.tasks, "split": "train", "method": cfg.method,
                  "seed": cfg.seed, "train_seconds": round(self.train_seconds, 3), **self._cpu_clock(),
                  "steps": self.step, "skipped_steps": self.skipped_steps, "loss": loss, "reg_loss": reg}
        self.log_metrics(record)
        logger.info("done: %d steps in %.1f s of training; mean loss %.4f, mean reg loss %.4f", self.step,
                    self.train_seconds, record["loss"], record["reg_loss"])
        return record

    def _train_epoch(self) -> int:
        """The rest of the sampler's epoch (from its position: resume), its optimizer steps, then its end (evaluation,
        best/, checkpoint); a run that reaches its last step inside the epoch stops there. Returns the epoch."""
        epoch = self.sampler.state.epoch
        for micro in self._accumulations():
            self._step(micro)
        if self.sampler.state.epoch > epoch:  # the sampler went through the whole epoch
            self._end_epoch(epoch)
        return epoch

    def _accumulations(self) -> Iterator[list[tuple[str, list[int]]]]:
        """The epoch's micro-batches ``(task, rows)``, ``grad_accumulation_steps`` at a time (the epoch's last
        group may be shorter), while the run has steps left. The sampler's position moves with what is taken.

        A group never asks the sampler for more batches than its epoch has left: past its last batch the sampler
        moves on to the next epoch, and a checkpoint written at the step of that group (periodic, or a stop)
        would then record the next epoch, so a resumed run would never evaluate this one. The sampler moves on
        only after the epoch's last step, where the epoch's end (evaluation, best/) follows at once."""
        batches, size = iter(self.sampler), self.cfg.grad_accumulation_steps
        while not self._finished():
            left = self.sampler.batches_left()
            if left <= 0:
                next(batches, None)  # the epoch is used up: the sampler moves on to the next epoch
                return
            yield list(itertools.islice(batches, min(size, left)))

    def _step(self, micro: list[tuple[str, list[int]]]) -> None:
        """One optimizer step over the micro-batches, its bookkeeping, then a stop a signal asked for."""
        t0, c0 = time.perf_counter(), time.process_time()
        ok = self.train_step(micro)
        self.train_seconds += time.perf_counter() - t0
        if self.train_cpu_seconds is not None:
            self.train_cpu_seconds += time.process_time() - c0
        if ok:
            self._count_step()
        else:
            self._count_skip()
        self._stop_if_asked()

    def _cpu_clock(self) -> dict:
        """``{"train_cpu_seconds": ...}`` for a record, or nothing when the run's CPU time is not known whole."""
        return {} if self.train_cpu_seconds is None else {"train_cpu_seconds": round(self.train_cpu_seconds, 3)}

    def _stop_if_asked(self) -> None:
        """After a step on which some rank caught SIGUSR2 or SIGTERM: write the checkpoint and raise
        :class:`mt_dnn.stop.Stopped` (every rank, at the same step)."""
        if not self._stop_agreed or self.step >= self.total_steps:  # at the last step: finish instead
            return
        self.bar.close()
        self.save_checkpoint()
        raise stop.Stopped(f"stopped by {self._stop.name if self._stop.requested else 'a signal on another rank'} "
                           f"at step {self.step}/{self.total_steps}; checkpoint saved in "
                           f"{Path(self.cfg.output_dir) / 'checkpoint'}: --resume continues from there")

    def _end_epoch(self, epoch: int, save: bool = True) -> None:
        self._evaluated_epoch = epoch
        logger.info("epoch %d ended at step %d (%.1f s of training so far)", epoch, self.step, self.train_seconds)
        if not self.cfg.no_eval:
            score = self.evaluate(epoch)
            self.maybe_save_best(score, epoch)
        if save and not self._finished() and (self.cfg.save_every_steps or self.cfg.resume):
            self.save_checkpoint()

    def _finished(self) -> bool:
        """The run's last step is taken, or, without --max_steps, its --epochs passes over the data are done: a
        skipped (non-finite) step uses up its batches without counting, so the steps alone would run past them."""
        return self.step >= self.total_steps or (not self.cfg.max_steps and self.sampler.state.epoch >= self.cfg.epochs)

    # ---- checkpoints ------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """``checkpoint/``, written atomically by rank 0 with every rank's RNG state; a failed write (full disk)
        keeps the previous checkpoint and is a one-line error on every rank."""
        mine = {"rng": checkpoint.rng_state(), "loss_sum": self.loss_sum, "reg_sum": self.reg_sum,
                "smart_skipped": getattr(self.reg, "skipped", 0)}
        ranks = distributed.gather(mine, self.world_size)  # every rank's own RNG, restored to that rank
        distributed.on_main(lambda: checkpoint.write(self.out, self.model, checkpoint.trainer_state(self, ranks)),
                           self.rank, self.world_size)
        if self.is_main:
            logger.info("checkpoint saved at step %d", self.step)

    def load_checkpoint(self, loaded: checkpoint.Loaded) -> None:
        """Restore a checkpoint that ``run_folder.plan_start`` accepted; this rank gets its own RNG state back."""
        checkpoint.restore(self, loaded)
        self.resumed = True
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", loaded.path, self.step,
                    self.sampler.state.epoch, self.sampler.state.position)
