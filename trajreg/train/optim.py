"""Optimizers and learning-rate schedules from an ``OptimConfig``."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name in ("sgd", "momentum"):
        momentum = cfg.momentum if cfg.momentum is not None else 0.0
        return torch.optim.SGD(params, lr=cfg.lr, momentum=momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int):
    """A per-step scheduler (``scheduler.step()`` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
