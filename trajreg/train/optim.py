"""Optimizers and per-step learning-rate schedules from an ``OptimConfig``.

The recorder reads each step's learning rate from the optimizer's param group at
that step, so v_t = u_t / eta_t always uses the scheduled value.

``OPTIMIZERS`` and ``SCHEDULES`` are the registries that own the names; ``OptimConfig``
(the config's ``optim`` section, re-exported by ``config.py``) validates against them,
so the builders here trust their input.

``parameter_groups`` splits a model's parameters into the decayed and the not decayed
(``optim.decay_exclude``); the optimizer's param-group order is the order of the flat
parameter vector x_t, so everything that reads or writes x as a vector takes the
parameters from ``trained_parameters`` (that order), never from ``model.parameters()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from trajreg.errors import ConfigError
from trajreg.train.checks import OMIT_AT_DEFAULT, check_float32, choice, positive, quote
from trajreg.train.models import TECHNIQUE_MODULES

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]  # tensors or param groups

# Modules whose parameters ``decay_exclude: [norm]`` exempts from weight decay: torch's
# normalisation layers (batch, instance, layer, group, RMS) and any listed as the model
# zoo's norm technique. Embeddings stay decayed (the GPT-2 / nanoGPT convention).
NORM_MODULES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm,
    torch.nn.RMSNorm, *TECHNIQUE_MODULES["norm"])
DECAY_EXCLUSIONS = ("norm", "bias")  # optim.decay_exclude's values



@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer, and what it takes."""

    build: Callable[[OptimConfig, Params, float], torch.optim.Optimizer]  # cfg, params, momentum
    momentum: float | None  # its default momentum; None: it takes no momentum
    needs_momentum: bool = False  # momentum must be > 0 (nesterov)
    state: int = 0  # state tensors the size of the parameters, besides a momentum buffer
    betas: bool = False  # reads ``optim.betas``


def _sgd(cfg: OptimConfig, params: Params, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.name == "nesterov")


def _adam(cfg: OptimConfig, params: Params, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr,
                            betas=cast("tuple[float, float]", tuple(cfg.betas)),
                            weight_decay=cfg.weight_decay)


def _adamw(cfg: OptimConfig, params: Params, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr,
                             betas=cast("tuple[float, float]", tuple(cfg.betas)),
                             weight_decay=cfg.weight_decay)


def _rmsprop(cfg: OptimConfig, params: Params, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=momentum,
                               weight_decay=cfg.weight_decay)


def _adagrad(cfg: OptimConfig, params: Params, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(_sgd, 0.0),
    "momentum": OptimizerSpec(_sgd, 0.9),  # heavy ball
    "nesterov": OptimizerSpec(_sgd, 0.9, needs_momentum=True),
    "adam": OptimizerSpec(_adam, None, state=2, betas=True),  # first and second moments
    "adamw": OptimizerSpec(_adamw, None, state=2, betas=True),
    "rmsprop": OptimizerSpec(_rmsprop, 0.0, state=1),  # the running square average
    "adagrad": OptimizerSpec(_adagrad, None, state=1),  # the sum of squares
}


def optimizer_state_tensors(cfg: OptimConfig) -> int:
    """The optimizer's state in tensors the size of the parameters: the spec's own, plus
    a momentum buffer when it takes momentum and ``cfg.momentum > 0``."""
    spec = OPTIMIZERS[cfg.name]
    return spec.state + (1 if spec.momentum is not None and cfg.momentum else 0)


def build_optimizer(cfg: OptimConfig, params: Params) -> torch.optim.Optimizer:
    """sgd, momentum (heavy ball), nesterov, adam, adamw, rmsprop or adagrad, over
    ``params`` (tensors, or ``parameter_groups(cfg, model)``)."""
    return OPTIMIZERS[cfg.name].build(cfg, params, cfg.momentum or 0.0)


def _not_decayed(cfg: OptimConfig, model: torch.nn.Module) -> set[int]:
    """ids of the parameters ``cfg.decay_exclude`` exempts: every parameter of a norm
    module (``NORM_MODULES``), and 1-D parameters named ``bias``."""
    out: set[int] = set()
    for module in model.modules():
        is_norm = "norm" in cfg.decay_exclude and isinstance(module, NORM_MODULES)
        for name, p in module.named_parameters(recurse=False):
            if is_norm or ("bias" in cfg.decay_exclude and name == "bias" and p.dim() == 1):
                out.add(id(p))
    return out


def parameter_groups(cfg: OptimConfig, model: torch.nn.Module
                     ) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
    """What ``build_optimizer`` takes for ``model``: its parameters as they are (one
    group, ``model.parameters()``'s order) without ``decay_exclude``; with it, two groups
    in ``model.parameters()``'s order each, the decayed then the exempt (weight_decay 0),
    an empty one left out. The order of x_t is then the groups' (``trained_parameters``)."""
    params = list(model.parameters())
    if not cfg.decay_exclude:
        return params
    exempt = _not_decayed(cfg, model)
    decayed = [p for p in params if id(p) not in exempt]
    other = [p for p in params if id(p) in exempt]
    groups: list[dict[str, Any]] = [{"params": decayed}, {"params": other, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def trained_parameters(cfg: OptimConfig, model: torch.nn.Module) -> list[torch.Tensor]:
    """The trainable parameters in the optimizer's order (``parameter_groups``): the
    order of the flat vector x_t the recorder writes, and the order to load such a vector
    back into ``model`` (``model.parameters()``'s order only without ``decay_exclude``)."""
    groups = parameter_groups(cfg, model)
    params = [p for g in groups for p in g["params"]] if groups and isinstance(
        groups[0], dict) else cast("list[torch.nn.Parameter]", groups)
    return [p for p in params if p.requires_grad]


def _constant(cfg: OptimConfig, T: int, S: int) -> Callable[[int], float]:
    return lambda t: 1.0


def _step(cfg: OptimConfig, T: int, S: int) -> Callable[[int], float]:
    every = max(1, cfg.step_epochs * S)
    return lambda t: cfg.decay ** (t // every)


def _cosine(cfg: OptimConfig, T: int, S: int) -> Callable[[int], float]:
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * t / T))


def _warmup_cosine(cfg: OptimConfig, T: int, S: int) -> Callable[[int], float]:
    W = min(cfg.warmup_epochs * S, T - 1)

    def factor(t: int) -> float:
        if t < W:
            return (t + 1) / W
        return 0.5 * (1.0 + math.cos(math.pi * (t - W) / (T - W)))

    return factor


# schedule -> the lr multiplier at step t, given the config, the run's steps T (>= 1) and
# the steps per epoch S
SCHEDULES: dict[str, Callable[[OptimConfig, int, int], Callable[[int], float]]] = {
    "constant": _constant, "step": _step, "cosine": _cosine, "warmup_cosine": _warmup_cosine,
}


@dataclass
class OptimConfig:
    """The ``optim`` section of a run config (``config.RunConfig``), validated against
    ``OPTIMIZERS`` and ``SCHEDULES``."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float | None = None  # None: 0.9 for momentum and nesterov, else 0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    schedule: str = "constant"  # constant | step | cosine | warmup_cosine
    step_epochs: int = 10  # step: decay the lr every this many epochs ...
    decay: float = 0.1  # ... by this factor
    warmup_epochs: int = 1  # warmup_cosine: linear warmup over this many epochs
    # a linear warmup over this many optimizer steps, times any schedule; 0: none
    warmup_steps: int = field(default=0, metadata=OMIT_AT_DEFAULT)
    # parameters exempt from weight_decay: norm (every parameter of a norm layer), bias
    # (1-D parameters named bias); []: all decayed, as before the key existed
    decay_exclude: list[str] = field(default_factory=list, metadata=OMIT_AT_DEFAULT)

    def validate(self) -> None:
        choice("optim.name", self.name, tuple(OPTIMIZERS))
        positive("optim.lr", self.lr)
        check_float32("optim.lr", self.lr)
        if self.momentum is not None:
            if not 0.0 <= self.momentum < 1.0:
                raise ConfigError(f"optim.momentum: must be in [0, 1), got {quote(self.momentum)}")
            check_float32("optim.momentum", self.momentum, below_one=True)
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: must be >= 0, got {quote(self.weight_decay)}")
        check_float32("optim.weight_decay", self.weight_decay)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: must be two numbers in [0, 1), got "
                              f"{quote(self.betas)}")
        for i, beta in enumerate(self.betas):
            check_float32(f"optim.betas[{i}]", beta, below_one=True)
        choice("optim.schedule", self.schedule, tuple(SCHEDULES))
        positive("optim.step_epochs", self.step_epochs)
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"optim.decay: must be in (0, 1], got {quote(self.decay)}")
        check_float32("optim.decay", self.decay)
        positive("optim.warmup_epochs", self.warmup_epochs)
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps: must be >= 0 (0: no warmup), got "
                              f"{quote(self.warmup_steps)}")
        if self.warmup_steps and self.schedule == "warmup_cosine":
            raise ConfigError("optim.warmup_steps: schedule warmup_cosine warms up already "
                              "(warmup_epochs); use schedule cosine with warmup_steps")
        for i, kind in enumerate(self.decay_exclude):
            choice(f"optim.decay_exclude[{i}]", kind, DECAY_EXCLUSIONS)
        if len(set(self.decay_exclude)) != len(self.decay_exclude):
            raise ConfigError(f"optim.decay_exclude: a value given twice: "
                              f"{quote(self.decay_exclude)}")
        spec = OPTIMIZERS[self.name]
        if spec.needs_momentum and self.momentum == 0.0:
            raise ConfigError(f"optim.momentum: {self.name} needs momentum > 0")
        if spec.momentum is None and self.momentum:
            raise ConfigError(f"optim.momentum: {self.name} takes no momentum"
                              + (" (set optim.betas)" if spec.betas else ""))

    def resolve(self) -> None:
        if self.momentum is None:
            self.momentum = OPTIMIZERS[self.name].momentum or 0.0


def lr_factor(cfg: OptimConfig, total_steps: int,
              steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base lr at step t (0-based), for ``cfg.schedule``,
    times min(1, (t + 1) / ``cfg.warmup_steps``) when ``warmup_steps`` > 0 (a linear
    warmup over the first optimizer steps, composed with any schedule):

    - constant:       1
    - step:           decay ** floor(t / (step_epochs * S))
    - cosine:         (1 + cos(pi t / T)) / 2
    - warmup_cosine:  (t + 1) / W for t < W, then (1 + cos(pi (t - W) / (T - W))) / 2

    with T the run's steps, S the steps per epoch and W = warmup_epochs * S. Every
    factor is > 0 for t < T, so eta_t > 0 at every step taken.

    >>> f = lr_factor(type("C", (), {"schedule": "cosine"})(), 4, 2)
    >>> [round(f(t), 4) for t in range(4)]
    [1.0, 0.8536, 0.5, 0.1464]
    """
    factor = SCHEDULES[cfg.schedule](cfg, max(total_steps, 1), steps_per_epoch)
    W = getattr(cfg, "warmup_steps", 0)
    if not W:
        return factor
    return lambda t: factor(t) * min(1.0, (t + 1) / W)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler (``scheduler.step()`` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lr_factor(cfg, total_steps, steps_per_epoch))
