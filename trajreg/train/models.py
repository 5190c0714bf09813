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


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (conv -> norm -> activation, then 2x2 max pooling) and a linear
    classifier; ``width`` is the channel count of the first block."""

    def __init__(self, in_channels: int, side: int, n_out: int, width: int, activation: str,
                 norm: str) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            bn = nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity()
            return [nn.Conv2d(c_in, c_out, 3, padding=1), bn, ACTIVATION_LAYERS[activation](),
                    nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, width), *block(width, 2 * width))
        self.classifier = nn.Linear(2 * width * (side // 4) ** 2, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _cnn(cfg, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] < 4:
        raise ValueError(f"model cnn needs image inputs (C, H, W), got shape {input_shape}")
    return SmallCNN(input_shape[0], input_shape[1], n_classes, cfg.width, cfg.activation,
                    cfg.norm)


def _mlp(cfg, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), n_classes, cfg.depth, cfg.width, cfg.activation,
               cfg.norm, cfg.dropout)


MODELS = {"mlp": _mlp, "cnn": _cnn}


def build_model(cfg, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build ``cfg.name`` (a ``ModelConfig``) for the data set's input shape and classes."""
    return MODELS[cfg.name](cfg, input_shape, n_classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
