"""Convergence-speed measures of a run (docs/principle.md, "Convergence speed").

Both take the per-epoch full training loss curve [F_0, ..., F_E].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trajreg.principle._validate import as_1d, as_float, as_loss_curve

__all__ = ["LOSS_FLOOR", "auc_log_loss", "steps_to_threshold"]

#: Losses at or below zero are clipped to this value before taking the log.
LOSS_FLOOR = 1e-12


def steps_to_threshold(
    full_loss: Any, epoch_ends: Any, threshold: float
) -> tuple[int | None, int | None]:
    """(steps, epochs) until the full training loss first reaches F_k <= threshold.

    k* = min{k >= 0 : F_k <= threshold}; returns (epoch_ends[k* - 1], k*), or
    (0, 0) when F_0 <= threshold, or (None, None) when no F_k qualifies.
    Non-finite F_k never qualify.

    >>> steps_to_threshold([2.0, 1.0, 0.2, 0.05], [10, 20, 30], 0.5)
    (20, 2)
    """
    F, ends = as_loss_curve(full_loss, epoch_ends)
    thr = as_float(threshold, "threshold")
    hits = np.flatnonzero(np.isfinite(F) & (F <= thr))
    if hits.size == 0:
        return None, None
    k = int(hits[0])
    return (0, 0) if k == 0 else (int(ends[k - 1]), k)


def auc_log_loss(full_loss: Any) -> float:
    """Mean log training loss over the run: (1/E) * trapezoid area under log F_k vs k.

    auc = (1/E) sum_{k=0}^{E-1} (log F_k + log F_{k+1}) / 2, with F_k <= 0 clipped
    to LOSS_FLOOR = 1e-12. Dividing by E makes runs of different lengths
    comparable; lower is faster. nan if any F_k is not finite.

    >>> round(auc_log_loss([1.0, float(np.exp(-2.0)), float(np.exp(-4.0))]), 12)
    -2.0
    """
    F = as_1d(full_loss, "full_loss")
    if F.shape[0] < 2:
        raise ValueError(f"full_loss must hold F_0 and at least one epoch, got length "
                         f"{F.shape[0]}")
    if not np.all(np.isfinite(F)):
        return float("nan")
    logs = np.log(np.maximum(F, LOSS_FLOOR))
    E = F.shape[0] - 1
    return float(np.sum(logs[:-1] + logs[1:]) / 2.0) / E
