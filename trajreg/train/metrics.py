"""Evaluation metrics: accuracy for classification, mean IoU for segmentation.

Pure functions over label arrays (numpy or torch); the loop feeds them predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Labels = torch.Tensor | np.ndarray | Sequence[int]


def _labels(x: Labels) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1).astype(np.int64)


def confusion_matrix(pred: Labels, target: Labels, n_classes: int) -> np.ndarray:
    """M[i, j] = number of elements (samples or pixels) with target i and prediction j.

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
    [[1, 1], [0, 1]]
    """
    p, t = _labels(pred), _labels(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in size: {p.shape} vs {t.shape}")
    return np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def accuracy(confusion: np.ndarray) -> float:
    """Fraction correct: trace(M) / sum(M).

    >>> accuracy(np.array([[1, 1], [0, 1]]))
    0.6666666666666666
    """
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def mean_iou(confusion: np.ndarray) -> float:
    """Mean over classes c present in target or prediction of
    IoU_c = M[c, c] / (sum_j M[c, j] + sum_i M[i, c] - M[c, c]).

    >>> round(mean_iou(np.array([[1, 1], [0, 1]])), 4)  # IoU 1/2 and 1/2
    0.5
    """
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float(np.mean(tp[present] / union[present])) if present.any() else float("nan")
