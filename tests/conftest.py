"""Shared fixtures: small, real configurations that train in about a second."""

from __future__ import annotations

import copy
import os

import pytest

# ``make test`` runs two pytest-xdist workers on the two cores: each computes on one
# thread (set before anything imports torch), or torch's default of a thread per core
# in each worker would oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# no test reaches an experiment tracker's servers (tests/tracker_files.py keeps their
# files in tmp_path): W&B offline, MLflow's telemetry off, set before either is imported
os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})

TINY = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64, "subset": 512},
    "model": {"name": "mlp", "depth": 3, "width": 32, "activation": "relu", "norm": "batch"},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 3},
    "record": {"mode": "store"},
}


def tiny(**sections) -> dict:
    """TINY with sections updated, e.g. ``tiny(optim={"name": "adam", "lr": 1e-3})``."""
    cfg = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def tiny_config():
    return tiny


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and a busy 2-core machine is not
    oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
