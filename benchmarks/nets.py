"""The nets the benchmarks time, defined once (``python benchmarks/X.py`` puts this
directory on sys.path): the small CNN on digits (d = 6090; callers copy it before
changing it) and the demo MLP (d = 22090), read from configs/digits_mlp.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEMO_MLP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_mlp.yaml"


def demo_mlp() -> dict[str, Any]:
    """The demo run's config (digits, a 6-layer MLP of width 64 with batch norm, SGD lr
    0.05, 30 epochs, store mode), a fresh copy."""
    return yaml.safe_load(DEMO_MLP_CONFIG.read_text())

SMALL_CNN: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "cnn", "width": 16, "activation": "relu", "norm": "batch"},
    "optim": {"name": "momentum", "lr": 0.05},
    "train": {"device": "cpu"},
}

