"""The small CNN on digits (d = 6090) that the benchmarks time, defined once
(``python benchmarks/X.py`` puts this directory on sys.path; the demo MLP is
configs/digits_mlp.yaml). Callers copy it before changing it."""

from __future__ import annotations

from typing import Any

SMALL_CNN: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "cnn", "width": 16, "activation": "relu", "norm": "batch"},
    "optim": {"name": "momentum", "lr": 0.05},
    "train": {"device": "cpu"},
}

