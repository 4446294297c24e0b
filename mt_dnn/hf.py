"""The regularizers (standard, SMART, RAPT, R3F) for any Hugging Face sequence classifier and ``transformers.Trainer``.

``HFClassifier`` wraps an ``AutoModelForSequenceClassification`` (BERT, RoBERTa, ELECTRA, DeBERTa(-v2) with or
without its conv layer, DistilBERT), also one wrapped by peft (LoRA adapters: ``get_peft_model``), in the small
interface the methods of ``mt_dnn.perturbation`` use; the methods themselves come from that registry unchanged.
``method="standard"`` perturbs nothing and works with any ``AutoModelForSequenceClassification``. ``RegularizedTrainer`` is a drop-in ``transformers.Trainer`` whose
training loss is ``task_loss + alpha * reg_loss``::

    trainer = RegularizedTrainer(model=clf, args=args, train_dataset=train, method="rapt",
                                 method_options={"eta": 2.0, "max_layer": 3}, seed=1)

Under DDP the whole regularized step (clean pass, noisy passes, loss) runs inside one forward of the wrapped
module: for that call the classifier's ``forward`` is temporarily the regularized step, so DDP sees one forward
per backward and its reducer all-reduces the gradient of the whole loss. Evaluation and prediction run the
plain model, without noise.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from data_utils.task_def import ConfigError
from mt_dnn.encoder_hooks import (EncoderHooks, HookedEncoder, LayerCapture, _replace_first, _with_hidden,
                                  unwrap_peft)
from mt_dnn.perturbation import Regularizer, build_regularizer

logger = logging.getLogger(__name__)


class HFClassifier(HookedEncoder):
    """A Hugging Face sequence classifier seen through the regularizers' interface.

    ``adapter(batch) -> logits (B, C)``; ``num_layers``; ``hidden_size``; ``reg_loss_kind(batch)``: ``"mse"`` for
    regression (``num_labels == 1`` or ``problem_type == "regression"``), else ``"sym_kl"``; the hooks
    ``perturb(layer, fn)``, ``perturb_token_embeddings(fn)``, ``capture(layer)`` on the classifier's own encoder
    (``model.base_model``); and ``logits_from(capture, hidden, batch)``, which re-runs only the modules above
    layer r and then the classifier's own head (pooler, dropout, classifier). ``batch`` is the Trainer's input
    dict: ``input_ids`` (B, T), ``attention_mask`` (B, T), optional ``token_type_ids`` and ``labels``.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        try:  # a peft classifier (LoRA): the hooks go on the encoder inside it, whose adapted layers run as usual
            self._hooks: EncoderHooks | None = EncoderHooks(unwrap_peft(model).base_model)
            self._no_hooks = ""
        except ConfigError as exc:  # only a method that perturbs the encoder needs them (standard does not)
            self._hooks, self._no_hooks = None, str(exc)
        # what runs the classifier: the module itself, or (inside the regularized step) the forward it had before
        self.call: Callable[..., Any] = model

    @property
    def hooks(self) -> EncoderHooks:
        """The encoder's hooks; a ConfigError for an encoder they do not know (BERT, RoBERTa, ELECTRA, DeBERTa(-v2),
        DistilBERT are known)."""
        if self._hooks is None:
            raise ConfigError(self._no_hooks)
        return self._hooks

    @property
    def num_layers(self) -> int:
        return self.hooks.num_layers

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def training(self) -> bool:
        return self.model.training

    def reg_loss_kind(self, batch: dict) -> str:
        cfg = self.model.config
        if cfg.num_labels == 1 or cfg.problem_type == "regression":
            return "mse"
        if cfg.problem_type == "multi_label_classification":
            raise ConfigError("multi-label classification has no regularizer divergence here "
                              "(sym_kl needs one softmax over the classes)")
        return "sym_kl"

    @staticmethod
    def batch(inputs: dict) -> dict:
        """The Trainer's inputs with an ``attention_mask`` (all ones when the collator gave none)."""
        if "attention_mask" not in inputs:
            inputs = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
        return inputs

    def outputs(self, batch: dict, with_labels: bool) -> Any:
        """The classifier's own output (``loss`` when labels are given, ``logits`` (B, C))."""
        return self.call(**{k: v for k, v in batch.items() if with_labels or k != "labels"})

    @staticmethod
    def logits_of(out: Any, batch: dict) -> torch.Tensor:
        """(B, C) logits: DeBERTa's regression head returns them flattened to (B,) when labels are given."""
        return out.logits.reshape(batch["input_ids"].shape[0], -1)

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.logits_of(self.outputs(batch, with_labels=False), batch)

    def logits_from(self, cap: LayerCapture, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """Logits (B, C) of the classifier run from layer r = ``cap.layer`` on ``hidden`` (B, T, H).

        One call of the classifier in which the transformer stack holds only blocks r + 1..L (the DeBERTa-v2 conv,
        which follows block 1, is dropped when r >= 1) and receives ``hidden`` as its input, so the encoder's own
        mask handling, the blocks above r and the classifier's own head run as usual. The embedding module still
        runs (its output is discarded). For r = L the stack keeps its last block, whose output is replaced by
        ``hidden`` (one block's forward is wasted; no gradient flows through it).
        """
        hooks, r = self.hooks, cap.layer
        stack, blocks, conv = hooks.stack, hooks.blocks, hooks.conv
        handles = [stack.register_forward_pre_hook(lambda m, a, k: _replace_first(a, k, hidden), with_kwargs=True)]
        if r == hooks.num_layers:
            kept = [blocks[r - 1]]
            handles.append(blocks[r - 1].register_forward_hook(lambda m, a, out: _with_hidden(out, hidden)))
        else:
            kept = list(blocks)[r:]
        try:
            if r > 0:
                stack.layer = nn.ModuleList(kept)
                if conv is not None:
                    stack.conv = None
            return self(batch)
        finally:
            stack.layer = blocks
            if conv is not None:
                stack.conv = conv
            for h in handles:
                h.remove()


@contextlib.contextmanager
def _forward_replaced(module: nn.Module, fn: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Inside the block ``module.forward`` is ``fn``; yields the forward that was in place (the class's, or an
    instance-level wrapper such as accelerate's autocast one)."""
    had_own = "forward" in module.__dict__
    saved = module.forward
    module.forward = fn
    try:
        yield saved
    finally:
        if had_own:
            module.forward = saved
        else:
            del module.forward


def regularized_forward(model: nn.Module, adapter: HFClassifier, reg: Regularizer, inputs: dict,
                        task_loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
                        ) -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, float]]:
    """The whole regularized step as one call of ``model`` (the classifier, or the DDP module wrapping it).

    Clean pass with labels -> the task loss: the classifier's own (batch mean), or ``task_loss(output, labels)``
    (the Trainer's label smoother); ``reg(adapter, batch, clean_logits)`` -> reg_loss; loss = task_loss +
    reg.alpha * reg_loss. Returns (output with ``loss`` and the clean ``logits``, task_loss, reg_loss, method
    logs); task_loss and reg_loss are detached.
    """
    if "labels" not in inputs:
        raise ConfigError("the regularized training step needs labels in the batch (key 'labels')")
    saved: dict[str, Any] = {}

    def step(*args: Any, **kwargs: Any) -> Any:
        if args:
            raise ConfigError("the regularized step takes the batch as keyword arguments")
        batch = adapter.batch(kwargs)
        with reg.clean_pass(adapter, batch):
            out = adapter.outputs(batch, with_labels=True)
        reg_loss, logs = reg(adapter, batch, adapter.logits_of(out, batch))
        task = out.loss if task_loss is None else task_loss(out, batch["labels"])
        saved.update(task=task.detach(), reg=reg_loss.detach(), logs=logs)
        out.loss = task + reg.alpha * reg_loss
        return out

    with _forward_replaced(adapter.model, step) as previous:
        adapter.call = previous
        try:
            out = model(**inputs)
        finally:
            adapter.call = adapter.model
    return out, saved["task"], saved["reg"], saved["logs"]


class RegularizedTrainer(Trainer):
    """``transformers.Trainer`` with a training regularizer: loss = task_loss + alpha * reg_loss.

    ``method``: a registered name (``standard``, ``smart``, ``rapt``, ``r3f``); ``method_options``: the method's
    options by the CLI's names without the method prefix (``eta``, ``max_layer``, ``share_lower_layers``,
    ``step_size``, ``lambda``, ...); ``seed``: RAPT's layer draw is a function of (seed, optimizer step,
    micro-batch index within the accumulation), the same on every rank.

    The task loss is the classifier's own (cross-entropy, or MSE for ``num_labels == 1``), with the Trainer's
    label smoothing when ``args.label_smoothing_factor`` is set (classification only: refused on a regression
    head); a custom ``compute_loss_func`` is refused. It is a mean over the micro-batch like the regularizer term;
    ``num_items_in_batch`` is not used (so ``average_tokens_across_devices`` has nothing to rescale) and the Trainer
    divides each
    micro-batch's loss by the number of accumulation steps (``loss_is_scaled_for_ga = False``, and
    ``model_accepts_loss_kwargs = False`` for versions of transformers that decide from that). Training logs
    carry ``task_loss`` and ``reg_loss`` (means since the last log, averaged over ranks, weighted as the
    Trainer's ``loss``: each optimizer step once, so ``loss`` = ``task_loss`` + alpha * ``reg_loss``) and the
    method's own logs (this rank's means) beside the Trainer's ``loss``.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, method: str = "rapt", method_options: dict[str, Any] | None = None,
                 seed: int = 0, **kwargs: Any):
        if kwargs.get("compute_loss_func") is not None:
            raise ConfigError("RegularizedTrainer computes its own loss (task_loss + alpha * reg_loss): "
                              "compute_loss_func is not supported")
        self.regularizer = build_regularizer(method, method_options, seed)
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if getattr(training_args, "torch_compile", False) and self.regularizer.uses_hooks:
            raise ConfigError(f"torch_compile works with method standard only: {method}'s noise goes in through "
                              "hooks added at each step, which a compiled model would not run")
        self.method = method
        self._adapter: HFClassifier | None = None
        self._micro_of: int | None = None  # the optimizer step the micro-batch counter belongs to
        self._micro = 0
        self._sums: torch.Tensor | None = None  # [task_loss, reg_loss] summed since the last log
        self._count = 0.0  # optimizer steps since the last log (micro-batches count as their share of one)
        self._log_sums: dict[str, float] = {}
        model = kwargs.get("model", args[0] if args else None)
        if model is not None:  # an unsupported encoder or impossible options fail before the Trainer exists (it
            # makes its output folder); the Trainer keeps this model object, so adapter() reuses the checked adapter
            self._adapter = self._checked_adapter(model, getattr(training_args, "label_smoothing_factor", 0.0))
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # batch-mean losses: the Trainer divides by the accumulation steps
        if self.model is not None:  # a model from model_init is checked here
            self.adapter(self.model)

    def _checked_adapter(self, model: nn.Module, smoothing: float) -> HFClassifier:
        """A new adapter of ``model``, refused when the regularizer cannot run on it or label smoothing is asked
        of a regression head."""
        adapter = HFClassifier(model)
        self.regularizer.check(adapter)
        if smoothing and adapter.reg_loss_kind({}) == "mse":
            raise ConfigError(f"label_smoothing_factor {smoothing} smooths class labels; this is a regression "
                              f"head (num_labels 1): set it to 0")
        return adapter

    def adapter(self, model: nn.Module) -> HFClassifier:
        """The adapter of the classifier inside ``model`` (DDP or accelerate wrappers removed), checked once."""
        inner = self.accelerator.unwrap_model(model)
        if self._adapter is None or self._adapter.model is not inner:
            self._adapter = self._checked_adapter(inner, self.args.label_smoothing_factor)
        return self._adapter

    def train(self, *args: Any, **kwargs: Any):
        self._micro_of, self._sums, self._count, self._log_sums = None, None, 0, {}
        return super().train(*args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        if not model.training:  # evaluation and prediction: the plain model, no noise
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        step = self.state.global_step
        if self._micro_of != step:
            self._micro_of, self._micro = step, 0
        else:
            self._micro += 1
        reg = self.regularizer
        reg.step, reg.micro = step, self._micro
        out, task_loss, reg_loss, logs = regularized_forward(model, self.adapter(model), reg, inputs,
                                                             self.label_smoother)
        self._record(task_loss, reg_loss, logs)
        return (out.loss, out) if return_outputs else out.loss

    def _record(self, task_loss: torch.Tensor, reg_loss: torch.Tensor, logs: dict[str, Any]) -> None:
        """Add a micro-batch's losses and method logs, weighted as the Trainer weights its ``loss``: each optimizer
        step counts once, its micro-batches sharing it (an epoch's last step may have fewer). Tensors stay on
        their device until :meth:`log` reads them."""
        share = 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        pair = torch.stack([task_loss.detach().float(), reg_loss.detach().float()]) * share
        self._sums = pair if self._sums is None else self._sums + pair
        self._count += share
        for k, v in logs.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self._log_sums[k] = self._log_sums.get(k, 0.0) + v * share

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._count:  # a training log: every rank is here at the same step
            means = self.accelerator.reduce(self._sums / self._count, reduction="mean")
            logs["task_loss"] = float(means[0])
            logs["reg_loss"] = float(means[1])
            for k, v in self._log_sums.items():
                logs[k] = float(v / self._count)
            self._sums, self._count, self._log_sums = None, 0, {}
        super().log(logs, *args, **kwargs)


class LastStep(TrainerCallback):
    """At the last optimizer step: log the training losses (``task_loss``, ``reg_loss``) however long
    ``logging_steps`` is, and with ``evaluate`` score the dev split (a ``--max_steps`` run's one evaluation)."""

    def __init__(self, evaluate: bool) -> None:
        self.evaluate = evaluate

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
            control.should_evaluate = control.should_evaluate or self.evaluate
        return control


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (its micro-batches' forward/backward and the update), in seconds;
    with ``path``, each step's ``<step>\t<seconds>`` is also appended to that file as it ends."""

    def __init__(self, path: str | None = None) -> None:
        self.times: list[float] = []
        self.path = path
        self._start: float | None = None

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self._sync()
            self.times.append(time.perf_counter() - self._start)
            self._start = None
            if self.path and state.is_world_process_zero:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(f"{state.global_step}\t{self.times[-1]:.4f}\n")

    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None
