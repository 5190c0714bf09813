"""The converging-phase window (docs/principle.md, "The converging-phase window").

Near the end of a run b_t shrinks to noise and the ratios r_t degenerate, so
gamma is estimated over the steps in which the loss is still converging.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trajreg.principle._validate import as_float, as_loss_curve

__all__ = ["converging_window"]


def converging_window(
    full_loss: Any,
    epoch_ends: Any,
    f_star: float | None = None,
    tau: float = 0.05,
    max_fraction: float = 0.9,
) -> tuple[int, int]:
    """The converging-phase window [start, end) of steps, start = 0.

    With F* = ``f_star`` (default F_E = full_loss[-1]) and T = epoch_ends[-1]:

    - k_end = the first epoch k >= 1 with F_k - F* <= tau (F_0 - F*); the window
      is the steps of epochs 1..k_end, i.e. [0, epoch_ends[k_end - 1]);
    - the window never exceeds the cap floor(max_fraction T) steps (but is at
      least 1 step), and the cap is the window when F_0 - F* <= 0, when F_0 or
      F* is not finite, or when no epoch qualifies.

    Non-finite F_k never qualify.

    Args:
        full_loss: [F_0, ..., F_E].
        epoch_ends: cumulative step count at the end of each epoch, length E.
        f_star: F(x*); defaults to the final loss.
        tau: relative threshold, >= 0.
        max_fraction: cap on the window as a fraction of all steps, in (0, 1].

    >>> converging_window([10.0, 3.0, 0.4, 0.1, 0.0], [100, 200, 300, 400])
    (0, 200)
    >>> converging_window([1.0, 0.9, 0.8], [50, 100])
    (0, 90)
    """
    F, ends = as_loss_curve(full_loss, epoch_ends)
    fs = float(F[-1]) if f_star is None else as_float(f_star, "f_star")
    tau_f = as_float(tau, "tau", allow_inf=False)
    if tau_f < 0:
        raise ValueError(f"tau must be >= 0, got {tau_f}")
    mf = as_float(max_fraction, "max_fraction")
    if not 0.0 < mf <= 1.0:
        raise ValueError(f"max_fraction must be in (0, 1], got {mf}")
    total = int(ends[-1])
    cap = max(1, math.floor(round(mf * total, 9)))
    gap0 = float(F[0]) - fs
    if not math.isfinite(gap0) or gap0 <= 0:
        return 0, cap
    with np.errstate(invalid="ignore"):
        qualifies = np.isfinite(F[1:]) & (F[1:] - fs <= tau_f * gap0)
    hits = np.flatnonzero(qualifies)
    if hits.size == 0:
        return 0, cap
    k_end = int(hits[0]) + 1
    return 0, min(int(ends[k_end - 1]), cap)
