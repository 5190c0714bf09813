"""The study's networks; every training technique is a switch that changes nothing else."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATION_LAYERS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def _norm1d(kind: str, width: int) -> nn.Module:
    return nn.BatchNorm1d(width) if kind == "batch" else nn.Identity()


class MLP(nn.Module):
    """``depth`` linear layers; each hidden layer is Linear -> norm -> activation (-> dropout)."""

    def __init__(self, n_in: int, n_out: int, depth: int, width: int, activation: str,
                 norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = n_in
        for _ in range(depth - 1):
            layers += [nn.Linear(size, width), _norm1d(norm, width),
                       ACTIVATION_LAYERS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _mlp(cfg, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), n_classes, cfg.depth, cfg.width, cfg.activation,
               cfg.norm, cfg.dropout)


MODELS = {"mlp": _mlp}


def build_model(cfg, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build ``cfg.name`` (a ``ModelConfig``) for the data set's input shape and classes."""
    return MODELS[cfg.name](cfg, input_shape, n_classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
