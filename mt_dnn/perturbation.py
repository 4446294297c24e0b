"""Training regularizers behind one registry: standard, smart, rapt, r3f.

Each method is one class with one call, ``reg(model, batch, clean_logits) -> (loss, logs)``: ``loss`` is the
un-weighted regularizer term (a 0-dim fp32 tensor), ``logs`` a dict of floats or detached 0-dim tensors (a
method never reads a device value on the host in its call: that would stall a GPU every step; the trainer reads
the logs when it logs them). The trainer computes ``task_loss + reg.alpha * loss`` (alpha is applied there, once)
and never looks at a method's name.
Before each micro-batch the trainer sets ``reg.step`` (optimizer step) and ``reg.micro`` (micro-batch index within
the step); a method that needs something from the clean forward pass returns a context manager from
``clean_pass(model, batch)`` (RAPT's shared-lower-layers path does).

The methods need only a small interface of ``model`` (``mt_dnn.model.MultiTaskModel`` provides it, and so does
the Hugging Face classifier wrapper in ``mt_dnn.hf``): ``model(batch) -> logits (B, C)``; ``num_layers``;
``hidden_size``; ``reg_loss_kind(batch) -> "sym_kl" | "mse"``; the context managers ``perturb(layer, fn)``,
``perturb_token_embeddings(fn)`` and ``capture(layer)``; and ``logits_from(capture, hidden, batch)``.

A method's options are a dataclass, ``Options``, whose fields are declared with ``mt_dnn.flags.setting`` (help,
choices, valid range); each becomes the CLI flag ``--<name>_<option>``. Adding a method is one class here and
nothing else.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from data_utils.task_def import ConfigError
from mt_dnn import losses
from mt_dnn.flags import Flag, declared, setting
from mt_dnn.model import MultiTaskModel

logger = logging.getLogger(__name__)

REGISTRY: dict[str, type["Regularizer"]] = {}


def register(cls: type["Regularizer"]) -> type["Regularizer"]:
    """Class decorator: add a method to the registry under ``cls.name`` (duplicates and non-methods fail)."""
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        raise TypeError(f"{cls!r} is not a Regularizer subclass")
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(REGISTRY)


def option_flags(name: str) -> tuple[Flag, ...]:
    """The flags of method ``name``'s options (``--rapt_eta``, ...)."""
    return declared(REGISTRY[name].Options, name)


def build_regularizer(name: str, options: dict[str, Any] | None = None, seed: int = 0) -> "Regularizer":
    """The method ``name`` with its options, each by its option name (``lambda``) or field name (``lambda_``) and
    checked against its declaration (type, choices, range); defaults for anything not given."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    flags = {k: f for f in option_flags(name) for k in (f.name, f.field)}
    unknown = sorted(set(options or {}) - set(flags))
    if unknown:
        raise ConfigError(f"method {name} has no option(s) {', '.join(unknown)}; "
                          f"its options: {', '.join(f.name for f in option_flags(name)) or 'none'}")
    values = {flags[k].field: flags[k].parse(v) for k, v in (options or {}).items()}
    return REGISTRY[name](REGISTRY[name].Options(**values), seed)


def _zero(device: torch.device) -> torch.Tensor:
    return torch.zeros((), device=device, dtype=torch.float32)


def _pad_mask(batch: dict, like: torch.Tensor) -> torch.Tensor:
    """(B, T, 1) mask of real tokens, in ``like``'s dtype."""
    return batch["attention_mask"].unsqueeze(-1).to(like.dtype)


class Regularizer:
    """Base class. Subclasses set ``name``, ``Options`` and implement ``__call__``."""

    name: ClassVar[str] = ""
    alpha_field: ClassVar[str] = "alpha"
    uses_hooks: ClassVar[bool] = True  # perturbs the encoder through its hooks (standard: works with any model)

    @dataclass
    class Options:
        pass

    def __init__(self, options: Any, seed: int = 0):
        self.options = options
        self.seed = seed
        self.step = 0  # optimizer step, set by the trainer before each micro-batch
        self.micro = 0  # micro-batch index within the optimizer step (gradient accumulation)

    @property
    def alpha(self) -> float:
        return float(getattr(self.options, self.alpha_field, 0.0))

    def check(self, model: MultiTaskModel) -> None:
        """Raise ConfigError if the options cannot work with this model (a method that perturbs the encoder needs
        the hooks: ``model.hooks`` raises for an encoder they do not know)."""
        if self.uses_hooks:
            model.hooks  # noqa: B018

    def clean_pass(self, model: MultiTaskModel, batch: dict):
        """A context manager wrapped around the clean forward pass (most methods need none)."""
        return contextlib.nullcontext()

    def __call__(self, model: MultiTaskModel, batch: dict, clean_logits: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


@register
class Standard(Regularizer):
    """Plain fine-tuning: no regularizer (loss 0)."""

    name = "standard"
    uses_hooks = False

    def __call__(self, model, batch, clean_logits):
        return _zero(clean_logits.device), {}


@register
class Rapt(Regularizer):
    """RAPT (Algorithm 1): scaled Gaussian noise on the output of a random layer r, divergence clean vs noisy.

    Per mini-batch r ~ U{1..max_layer} as a function of (seed, step, micro-batch), so every rank draws the same r
    (max_layer = 0: the embedding output, "RAPT (Embedding)"). delta ~ N(0, 1) of the hidden states' shape
    (B, T, H), zero on padding, scaled to eta / ||delta||_inf per example (or per token), added to layer r's
    state (what the encoder passes to block r + 1); loss = sym_kl(clean, noisy) (MSE for regression), averaged
    over rows. The paper's sigma cancels in that scaling, so there is no sigma option. No extra backward pass.
    Paper-literal path: the noisy input gets a full forward pass of its own (its own dropout masks).
    Shared lower layers: the noisy pass re-runs only the modules above r on the clean pass's layer-r state.
    """

    name = "rapt"

    @dataclass
    class Options:
        alpha: float = setting(1.0, "weight of the clean-vs-noisy divergence", ge=0)
        eta: float = setting(2.0, "inf-norm of the noise (paper: 0.01, 1.5, 2, 2.3, 2.5)", ge=0)
        max_layer: int = setting(3, "r is drawn from 1..max_layer; 0 = embedding output only (RAPT Embedding)",
                                 ge=0)
        norm: str = setting("example", "scale the noise per example (Algorithm 1) or per token",
                            choices=("example", "token"))
        share_lower_layers: bool = setting(False, "noisy pass re-runs only the blocks above r on the clean pass's "
                                                  "state (faster; shares dropout masks below r: a variant)")

    def check(self, model: MultiTaskModel) -> None:
        if not 0 <= self.options.max_layer <= model.num_layers:
            raise ConfigError(f"--rapt_max_layer {self.options.max_layer} is outside 0..{model.num_layers} "
                              f"(this encoder has {model.num_layers} layers)")

    def layer_for_step(self, step: int, micro: int = 0) -> int:
        """r as a function of (seed, optimizer step, micro-batch index) only: the same on every rank."""
        if self.options.max_layer == 0:
            return 0
        key = [self.seed, step, 0x52415054] if micro == 0 else [self.seed, step, micro, 0x52415054]
        return int(np.random.default_rng(key).integers(1, self.options.max_layer + 1))

    def noise(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """delta (B, T, H): N(0, 1), zero on padding, scaled so ||delta||_inf = eta per example (or token)."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        delta = torch.randn_like(hidden) * mask
        dims = (1, 2) if self.options.norm == "example" else (2,)
        peak = delta.abs().amax(dim=dims, keepdim=True)
        return self.options.eta * delta / peak.clamp_min(torch.finfo(hidden.dtype).tiny)

    @contextlib.contextmanager
    def clean_pass(self, model, batch):
        """Shared-lower-layers path: record layer r's state and the blocks' arguments during the clean pass."""
        self._capture = None
        if not self.options.share_lower_layers:
            yield
            return
        with model.capture(self.layer_for_step(self.step, self.micro)) as cap:
            yield
        self._capture = cap

    def __call__(self, model, batch, clean_logits):
        layer = self.layer_for_step(self.step, self.micro)
        seen: dict[str, torch.Tensor] = {}
        capture, self._capture = getattr(self, "_capture", None), None

        def add_noise(h: torch.Tensor) -> torch.Tensor:
            delta = self.noise(h, batch["attention_mask"])
            with torch.no_grad():  # ||delta|| / ||h|| over real tokens, a 0-dim tensor (read when logged)
                seen["ratio"] = delta.float().norm() / (h.float() * _pad_mask(batch, h.float())).norm().clamp_min(1e-12)
            return h + delta

        if capture is not None:  # shared lower layers: reuse the clean pass up to r
            noisy = model.logits_from(capture, add_noise(capture.hidden), batch)
        else:  # paper-literal: a full forward pass of its own
            with model.perturb(layer, add_noise):
                noisy = model(batch)
        loss = losses.divergence(model.reg_loss_kind(batch), clean_logits, noisy)
        return loss, {"rapt_layer": float(layer), "rapt_noise_ratio": seen["ratio"]}


@register
class Smart(Regularizer):
    """SMART as MT-DNN's code runs it (the paper's baseline): virtual adversarial noise at the embedding output.

    delta (B, T, H) at layer 0, initialised N(0, 1) * noise_var (zero on padding); K ascent steps with
    g = grad_delta of MT-DNN's inner objective (``losses.adversarial_objective``: its log-odds KL summed over the
    batch, times 2; summed squared error for regression), so each example's step is independent of the batch size:
    ``normalize`` (MT-DNN): delta <- normalise(delta + step_size * g), per-token inf / l2 norm or sign; the scale of
    the objective matters here and is MT-DNN's, so MT-DNN's step sizes carry over;
    ``ball`` (SMART paper): delta <- clip(delta + step_size * normalise(g), -radius, radius); g is normalised, so
    the objective's scale does not matter.
    Then loss = sym_kl(clean, noisy(delta)) (MSE for regression), averaged over rows. A non-finite gradient norm
    skips the term for that step (counted on the device; ``skipped`` reads the count).
    """

    name = "smart"

    @dataclass
    class Options:
        alpha: float = setting(1.0, "weight of the adversarial term", ge=0)
        noise_var: float = setting(1e-5, "scale of the initial noise N(0, 1) * noise_var", ge=0)
        step_size: float = setting(1e-3, "ascent step size (normalize: on MT-DNN's scale, the inner objective "
                                         "summed over the batch; ball: along the normalised gradient)", ge=0)
        k: int = setting(1, "number of ascent steps", ge=1)
        norm: str = setting("inf", "normalisation of the step: per-token inf-norm, l2-norm, or sign (l1)",
                            choices=("inf", "l2", "l1"))
        epsilon: float = setting(1e-6, "guards the normalising division", gt=0)
        projection: str = setting("normalize", "normalize (MT-DNN: delta <- normalise(delta + step_size * g), g of "
                                               "the batch-summed objective) or ball (SMART paper: step along "
                                               "normalise(g), clipped to the inf-ball of --smart_radius)",
                                  choices=("normalize", "ball"))
        radius: float = setting(1e-5, "inf-norm radius of the ball projection", ge=0)

    def __init__(self, options, seed=0):
        super().__init__(options, seed)
        self._skipped_before = 0  # skips counted up to the last ``skipped = n`` (a checkpoint's count)
        self._skipped_since: torch.Tensor | None = None  # skips since then, counted on the device

    @property
    def skipped(self) -> int:
        """Steps whose adversarial term was skipped (non-finite gradient norm). Reading it waits for the device."""
        return self._skipped_before + (int(self._skipped_since) if self._skipped_since is not None else 0)

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._skipped_before, self._skipped_since = int(value), None

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Per token (last dim): x / (||x||_inf + eps), x / (||x||_2 + eps), or sign(x)."""
        if self.options.norm == "inf":
            return x / (x.abs().amax(dim=-1, keepdim=True) + self.options.epsilon)
        if self.options.norm == "l2":
            return x / (x.norm(dim=-1, keepdim=True) + self.options.epsilon)
        return x.sign()

    def ascend(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.projection == "ball":
            return (delta + o.step_size * self.normalise(grad)).clamp(-o.radius, o.radius)
        return self.normalise(delta + o.step_size * grad)

    def __call__(self, model, batch, clean_logits):
        o = self.options
        kind = model.reg_loss_kind(batch)
        ids = batch["input_ids"]
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        # delta (B, T, H) at layer 0, initialised N(0, 1) * noise_var, zero on padding; kept in fp32
        delta = torch.randn(*ids.shape, model.hidden_size, device=ids.device) * o.noise_var * mask

        def add_delta(h: torch.Tensor) -> torch.Tensor:
            return h + delta.to(h.dtype)

        # A non-finite gradient norm skips the term, decided on the device (no host read in the step): delta is
        # zeroed so that the last pass stays finite, and its loss is replaced by 0, which sends exactly zero
        # gradient back through it.
        finite = torch.ones((), dtype=torch.bool, device=ids.device)
        share = _zero(ids.device)
        for _ in range(o.k):
            delta.requires_grad_(True)
            with model.perturb(0, add_delta):
                noisy = model(batch)
            inner = losses.adversarial_objective(kind, clean_logits, noisy)
            (grad,) = torch.autograd.grad(inner, delta)
            delta = delta.detach()
            finite = finite & torch.isfinite(grad.norm())
            step = o.step_size * grad
            share = torch.where(finite, step.norm() / (delta + step).norm().clamp_min(1e-30), 0.0)
            delta = torch.where(finite, self.ascend(delta, grad) * mask, 0.0)
        with model.perturb(0, add_delta):
            noisy = model(batch)
        loss = torch.where(finite, losses.divergence(kind, clean_logits, noisy), 0.0)
        skipped = (~finite).to(torch.int64)
        self._skipped_since = skipped if self._skipped_since is None else self._skipped_since + skipped
        return loss, {"smart_delta_inf": delta.abs().max(), "smart_grad_share": share, "smart_skipped": skipped.float(),
                      "smart_skipped_total": self._skipped_since + self._skipped_before}


@register
class R3f(Regularizer):
    """R3F (Aghajanyan et al., 2020) as fairseq's sentence_prediction_r3f runs it: noise on the token embeddings.

    z ~ U(-eps, eps) (or N(0, eps^2)) of the token embeddings' shape (B, T, E) is added to a detached copy of the
    token embedding lookup (before position/type embeddings and LayerNorm), so the noisy pass sends no gradient
    into the embedding table through the lookup. loss = KL(p_clean || p_noisy) + KL(p_noisy || p_clean), summed
    over classes and averaged over rows, with the gradient through both arguments of both terms. Regression tasks
    get no R3F term (as in fairseq): the loss is 0 and no noisy pass runs.
    """

    name = "r3f"
    alpha_field = "lambda_"

    @dataclass
    class Options:
        lambda_: float = setting(1.0, "weight of the symmetric KL (no term on regression tasks)", ge=0,
                                 flag="lambda")
        eps: float = setting(1e-5, "noise scale", ge=0)
        noise: str = setting("uniform", "U(-eps, eps) or N(0, eps^2)", choices=("uniform", "normal"))

    def __call__(self, model, batch, clean_logits):
        o = self.options
        if model.reg_loss_kind(batch) == "mse":
            return _zero(clean_logits.device), {}

        def add_noise(e: torch.Tensor) -> torch.Tensor:
            if o.noise == "uniform":
                z = torch.empty_like(e).uniform_(-o.eps, o.eps)
            else:
                z = torch.randn_like(e) * o.eps
            return e.detach() + z

        with model.perturb_token_embeddings(add_noise):
            noisy = model(batch)
        return losses.sym_kl_both(clean_logits, noisy), {}

