"""Offline data sets, held as in-memory tensors so loading never dominates a step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trajreg.errors import ConfigError

SPLIT_SEED = 0  # the train/test split is the same for every run seed


@dataclass(frozen=True)
class Dataset:
    """A classification data set: float inputs and integer labels, train and test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None] / 16.0  # (n, 1, 8, 8)
    return images, bunch.target.astype(np.int64)


DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {"digits": _digits}


def load_data(cfg) -> Dataset:
    """Load ``cfg.name`` (a ``DataConfig``), split deterministically and standardise.

    The split is fixed (``SPLIT_SEED``), so runs that differ in seed see the same data;
    ``subset`` keeps the first N training examples. Features are standardised with the
    training set's mean and standard deviation.
    """
    x, y = DATASETS[cfg.name]()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(cfg.test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    if cfg.subset is not None:
        train = train[: cfg.subset]
    if len(train) < cfg.batch_size:
        raise ConfigError(
            f"data.batch_size: {cfg.batch_size} exceeds the {len(train)} training examples"
        )
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0) + 1e-6
    x = (x - mean) / std
    return Dataset(
        name=cfg.name,
        x_train=torch.from_numpy(np.ascontiguousarray(x[train])),
        y_train=torch.from_numpy(y[train]),
        x_test=torch.from_numpy(np.ascontiguousarray(x[test])),
        y_test=torch.from_numpy(y[test]),
        n_classes=int(y.max()) + 1,
    )
