"""Optimizers and per-step learning-rate schedules from an ``OptimConfig``.

The recorder reads each step's learning rate from the optimizer's param group at
that step, so v_t = u_t / eta_t always uses the scheduled value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """sgd, momentum (heavy ball), nesterov, adam, adamw, rmsprop or adagrad."""
    momentum = cfg.momentum or 0.0
    wd = cfg.weight_decay
    if cfg.name in ("sgd", "momentum", "nesterov"):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=momentum, weight_decay=wd,
                               nesterov=cfg.name == "nesterov")
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=wd)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=wd)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=momentum, weight_decay=wd)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def lr_factor(cfg, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base lr at step t (0-based), for ``cfg.schedule``:

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
    T = max(total_steps, 1)
    if cfg.schedule == "constant":
        return lambda t: 1.0
    if cfg.schedule == "step":
        every = max(1, cfg.step_epochs * steps_per_epoch)
        return lambda t: cfg.decay ** (t // every)
    if cfg.schedule == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * t / T))
    if cfg.schedule == "warmup_cosine":
        W = min(cfg.warmup_epochs * steps_per_epoch, T - 1)

        def factor(t: int) -> float:
            if t < W:
                return (t + 1) / W
            return 0.5 * (1.0 + math.cos(math.pi * (t - W) / (T - W)))

        return factor
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler (``scheduler.step()`` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lr_factor(cfg, total_steps, steps_per_epoch))
