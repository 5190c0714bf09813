"""The convergence bound implied by the principle (docs/principle.md, "The convergence bound").

If RP(gamma; eta_t/2) holds at every step t of a window [t0, t1) and gamma > 0,
then, summing the identity D_t - D_{t+1} = 2 eta_t a_t - eta_t^2 s_t
= 2 eta_t (a_t - eta_t s_t / 2) >= 2 eta_t gamma b_t over the window,

    sum_t eta_t b_t <= (D_{t0} - D_{t1}) / (2 gamma) <= D_{t0} / (2 gamma),

i.e. sum_t eta_t b_t / sum_t eta_t <= D_{t0} / (2 gamma sum_t eta_t); with a
constant eta this is (1/T) sum_t b_t <= D_0 / (2 eta gamma T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trajreg.principle._validate import as_1d, as_float, as_lrs, check_same_length

__all__ = ["BoundCheck", "convergence_bound"]


@dataclass(frozen=True)
class BoundCheck:
    """Both sides of the convergence bound over a window.

    Attributes:
        lhs: sum eta_t b_t / sum eta_t, the learning-rate-weighted mean loss gap.
        rhs: D0 / (2 gamma sum eta_t) (inf when gamma <= 0 or nan, 0 when gamma = +inf).
        holds: lhs <= rhs (up to a relative rounding tolerance, see convergence_bound).
        gamma: the gamma used.
    """

    lhs: float
    rhs: float
    holds: bool
    gamma: float


def convergence_bound(
    b: Any, lrs: Any, D0: float, gamma: float, *, rtol: float = 1e-9
) -> BoundCheck:
    """Check sum eta_t b_t / sum eta_t <= D0 / (2 gamma sum eta_t) over a window.

    lhs = sum_t eta_t b_t / sum_t eta_t (equals (1/T) sum_t b_t for a constant
    eta); rhs = D0 / (2 gamma sum_t eta_t), with D0 = ||x_{t0} - x*||^2 at the
    start of the window. The bound is vacuous (rhs = inf) when gamma <= 0 or
    gamma is nan, and rhs = 0 when gamma = +inf. Otherwise a nan D0 (unknown)
    gives rhs = nan and holds = False.

    If RP(gamma; eta_t/2) holds at every step of the window (e.g. gamma =
    gamma_hat(a, b, s, lrs/2, eps=0) computed from the same trajectory, with
    0 < gamma), ``holds`` is guaranteed True: the bound is a consequence of the
    identity D_t - D_{t+1} = 2 eta_t a_t - eta_t^2 s_t. Because that identity is
    exact only up to rounding and the bound can be tight (a window that ends at
    x* with every step tight), ``holds`` is lhs <= rhs (1 + rtol).

    Args:
        b: loss gaps over the window, shape (n,), n >= 1.
        lrs: learning rates over the window, shape (n,), > 0.
        D0: squared distance to x* at the first step of the window, >= 0 (or nan).
        gamma: the regularity parameter (usually gamma_hat with eps = 0).
        rtol: relative tolerance of ``holds``.

    >>> bc = convergence_bound([1.0, 0.5], [0.5, 0.5], 10.0, 4.0)
    >>> bc.lhs, bc.rhs, bc.holds
    (0.75, 1.25, True)
    """
    b_arr = as_1d(b, "b")
    lrs_arr = as_lrs(lrs)
    n = check_same_length(b=b_arr, lrs=lrs_arr)
    if n == 0:
        raise ValueError("b must hold at least one step")
    d0 = as_float(D0, "D0", allow_nan=True, allow_inf=False)
    if d0 < 0:
        raise ValueError(f"D0 must be >= 0 (a squared distance), got {d0}")
    g = as_float(gamma, "gamma", allow_nan=True)
    tol = as_float(rtol, "rtol", allow_inf=False)
    if tol < 0:
        raise ValueError(f"rtol must be >= 0, got {tol}")
    eta_sum = float(np.sum(lrs_arr))
    lhs = float(np.sum(lrs_arr * b_arr)) / eta_sum
    if math.isnan(g) or g <= 0:
        rhs = math.inf
    elif math.isnan(d0):
        rhs = math.nan
    elif math.isinf(g):
        rhs = 0.0
    else:
        rhs = d0 / (2.0 * g * eta_sum)
    holds = bool(lhs <= rhs + tol * rhs)
    return BoundCheck(lhs=lhs, rhs=rhs, holds=holds, gamma=g)
