"""Estimating the regularity parameter gamma (docs/principle.md, "Estimating gamma").

The principle RP(gamma; delta) at step t reads a_t >= gamma b_t + delta_t s_t.
With c_t = a_t - delta_t s_t and r_t = c_t / b_t:

- b_t > 0: RP holds iff gamma <= r_t;
- b_t < 0: RP holds iff gamma >= r_t;
- b_t = 0: RP holds for every gamma iff c_t >= 0, else for none.

Conventions used by every function here:

- A step whose c_t or b_t is not finite (a nan or infinite loss, a diverged
  iterate) violates RP for every gamma.
- RP is evaluated in the ratio form above, so :func:`rp_holds` and
  :func:`gamma_hat` agree exactly: at most floor(eps n) steps fail
  ``rp_holds(..., gamma_hat(..., eps))``.
- ``delta`` is a scalar or one value per step; it must be finite.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trajreg.principle._validate import (
    allowed_violations,
    as_1d,
    as_delta,
    as_float,
    as_int_labels,
    as_lrs,
    check_eps,
    check_nonnegative,
    check_same_length,
)

__all__ = [
    "fraction_obeying",
    "gamma_bar",
    "gamma_bar_per_epoch",
    "gamma_hat",
    "gamma_hat_per_epoch",
    "kappa_bar",
    "kappa_hat",
    "r_quantiles",
    "rp_holds",
    "star_convex_fraction",
    "star_convexity",
]


def _validate_steps(a: Any, b: Any, s: Any, delta: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                np.ndarray]:
    a_arr = as_1d(a, "a")
    b_arr = as_1d(b, "b")
    s_arr = as_1d(s, "s")
    n = check_same_length(a=a_arr, b=b_arr, s=s_arr)
    check_nonnegative(s_arr, "s")
    d_arr = as_delta(delta, n)
    return a_arr, b_arr, s_arr, d_arr


def _margin(a: np.ndarray, s: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """c_t = a_t - delta_t s_t."""
    with np.errstate(over="ignore", invalid="ignore"):
        return a - delta * s


def _rp_holds_compute(c: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    finite = np.isfinite(c) & np.isfinite(b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = c / b
    holds = np.where(b > 0, gamma <= r, np.where(b < 0, gamma >= r, c >= 0))
    return holds & finite


def rp_holds(a: Any, b: Any, s: Any, gamma: float, delta: Any) -> np.ndarray:
    """Whether RP(gamma; delta) holds at each step: a_t >= gamma b_t + delta_t s_t.

    For b_t == 0 the term gamma b_t is taken as 0 (also for gamma = +-inf), so
    the test is a_t - delta_t s_t >= 0. Evaluated in the ratio form (see the
    module docstring); steps with non-finite values are False. A nan gamma
    (e.g. gamma_hat of an empty window) gives False everywhere.

    Args:
        a: per-step a_t, shape (n,).
        b: per-step b_t, shape (n,).
        s: per-step s_t, shape (n,).
        gamma: the parameter; a real number, +-inf or nan.
        delta: scalar or shape (n,).

    >>> rp_holds([3.0, 1.0, 1.0, -1.0], [1.0, -1.0, 0.0, 0.0], [0.0] * 4, 2.0, 0.0).tolist()
    [True, True, True, False]
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    g = as_float(gamma, "gamma", allow_nan=True)
    if math.isnan(g):
        return np.zeros(a_arr.shape[0], dtype=bool)
    return _rp_holds_compute(_margin(a_arr, s_arr, d_arr), b_arr, g)


def _gamma_hat_compute(c: np.ndarray, b: np.ndarray, k: int) -> float:
    """Largest gamma with at most k violations, for margins c and gaps b."""
    if c.size == 0:
        return float("nan")
    finite = np.isfinite(c) & np.isfinite(b)
    pos = finite & (b > 0)
    neg = finite & (b < 0)
    zero_bad = finite & (b == 0) & (c < 0)
    with np.errstate(over="ignore"):
        r_up = c[pos] / b[pos]  # constraint gamma <= r (finite, or +-inf on overflow)
        r_lo = c[neg] / b[neg]  # constraint gamma >= r
    # Steps violated for every real gamma: non-finite data, b == 0 with c < 0,
    # and overflowed ratios gamma <= -inf or gamma >= +inf.
    v0 = int(np.count_nonzero(~finite) + np.count_nonzero(zero_bad)
             + np.count_nonzero(r_up == -np.inf) + np.count_nonzero(r_lo == np.inf))
    if v0 > k:
        return float("-inf")
    upper = np.sort(r_up[np.isfinite(r_up)])
    lower = np.sort(r_lo[np.isfinite(r_lo)])
    # Above every breakpoint only the upper constraints fail.
    if v0 + upper.size <= k:
        return float("inf")
    # The violation count V(gamma) = v0 + #{upper < gamma} + #{lower > gamma}
    # rises only just after an upper breakpoint, so the admissible set's
    # maximum (it is bounded above here) is an upper breakpoint.
    cand = np.unique(upper)
    viol = (v0 + np.searchsorted(upper, cand, side="left")
            + (lower.size - np.searchsorted(lower, cand, side="right")))
    ok = np.flatnonzero(viol <= k)
    if ok.size == 0:
        return float("-inf")
    return float(cand[ok[-1]])


def gamma_hat(a: Any, b: Any, s: Any, delta: Any, eps: float = 0.0) -> float:
    """gamma_hat_eps: the largest real gamma with at most floor(eps n) violations of RP.

    gamma_hat_eps = max{gamma : #{t : a_t < gamma b_t + delta_t s_t} <= floor(eps n)}.

    Computed exactly in O(n log n): the violation count changes only at the
    breakpoints r_t = (a_t - delta_t s_t) / b_t, all constraints are closed
    (gamma <= r_t for b_t > 0, gamma >= r_t for b_t < 0), so the maximum is
    attained at a breakpoint with b_t > 0. Returns +inf when arbitrarily large
    gamma qualify, -inf when no gamma does, nan for an empty window (n = 0).
    floor(eps n) is computed with eps n rounded to 9 decimals.

    Args:
        a: per-step a_t, shape (n,).
        b: per-step b_t, shape (n,).
        s: per-step s_t, shape (n,); s >= 0.
        delta: scalar or shape (n,) (the default of the principle is eta_t / 2).
        eps: allowed fraction of violating steps, in [0, 1).

    >>> a, b, s = [3.0, 2.0, 5.0, 0.0], [1.0, 1.0, 1.0, -1.0], [0.0] * 4
    >>> gamma_hat(a, b, s, 0.0), gamma_hat(a, b, s, 0.0, eps=0.25)
    (2.0, 3.0)
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    e = check_eps(eps)
    k = allowed_violations(a_arr.shape[0], e)
    return _gamma_hat_compute(_margin(a_arr, s_arr, d_arr), b_arr, k)


def _raw_update(a: Any, s: Any, lrs: Any) -> tuple[np.ndarray, np.ndarray]:
    a_arr = as_1d(a, "a")
    s_arr = as_1d(s, "s")
    lrs_arr = as_lrs(lrs)
    check_same_length(a=a_arr, s=s_arr, lrs=lrs_arr)
    return lrs_arr * a_arr, lrs_arr**2 * s_arr


def kappa_hat(a: Any, b: Any, s: Any, lrs: Any, eps: float = 0.0) -> float:
    """Learning-rate-free estimate kappa_hat_eps = gamma_hat_eps(eta a, b, eta^2 s, 1/2).

    That is gamma_hat for the update form <x_t - x*, u_t> - ||u_t||^2 / 2 >= kappa b_t
    (a_u = eta_t a_t, s_u = eta_t^2 s_t). For a constant eta and the default
    delta = eta/2 it equals eta * gamma_hat (up to rounding).

    >>> kappa_hat([3.0, 2.0], [1.0, 1.0], [0.0, 0.0], [0.5, 0.5])
    1.0
    """
    a_u, s_u = _raw_update(a, s, lrs)
    return gamma_hat(a_u, b, s_u, 0.5, eps)


def gamma_bar(a: Any, b: Any, s: Any, delta: Any) -> float:
    """Aggregate estimate gamma_bar = sum_t (a_t - delta_t s_t) / sum_t b_t.

    nan for an empty set of steps or when sum_t b_t == 0. Over a window this is
    tied to the mean loss gap by the identity (see docs/principle.md): a
    description, not evidence that the principle holds step by step.

    >>> gamma_bar([3.0, 1.0], [1.0, 1.0], [2.0, 2.0], 0.5)
    1.0
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    return _gamma_bar_compute(_margin(a_arr, s_arr, d_arr), b_arr)


def _gamma_bar_compute(c: np.ndarray, b: np.ndarray) -> float:
    if c.size == 0:
        return float("nan")
    sb = float(np.sum(b))
    if sb == 0:
        return float("nan")
    return float(np.sum(c)) / sb


def kappa_bar(a: Any, b: Any, s: Any, lrs: Any) -> float:
    """kappa_bar = sum_t (eta_t a_t - eta_t^2 s_t / 2) / sum_t b_t (nan as gamma_bar).

    >>> kappa_bar([3.0, 1.0], [1.0, 1.0], [2.0, 2.0], [0.5, 0.5])
    0.75
    """
    a_u, s_u = _raw_update(a, s, lrs)
    return gamma_bar(a_u, b, s_u, 0.5)


def _split_by_epoch(epoch: Any, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    labels = as_int_labels(epoch, "epoch")
    if labels.shape[0] != n:
        raise ValueError(f"epoch must have one label per step: length {n}, "
                         f"got {labels.shape[0]}")
    if n == 0:
        return labels, []
    order = np.argsort(labels, kind="stable")
    uniq, starts = np.unique(labels[order], return_index=True)
    return uniq, np.split(order, starts[1:])


def gamma_hat_per_epoch(
    a: Any, b: Any, s: Any, delta: Any, epoch: Any, eps: float = 0.0
) -> np.ndarray:
    """gamma_hat_eps over the steps of each epoch, one value per distinct label.

    Values are in increasing order of the labels, i.e. ``np.unique(epoch)``;
    each epoch uses its own floor(eps n_epoch).

    >>> gamma_hat_per_epoch([3.0, 2.0, 5.0], [1.0, 1.0, 1.0], [0.0] * 3, 0.0, [1, 1, 2]).tolist()
    [2.0, 5.0]
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    e = check_eps(eps)
    _, groups = _split_by_epoch(epoch, a_arr.shape[0])
    c = _margin(a_arr, s_arr, d_arr)
    return np.array([_gamma_hat_compute(c[g], b_arr[g], allowed_violations(g.size, e))
                     for g in groups], dtype=np.float64)


def gamma_bar_per_epoch(a: Any, b: Any, s: Any, delta: Any, epoch: Any) -> np.ndarray:
    """gamma_bar over the steps of each epoch, in the order of ``np.unique(epoch)``.

    >>> gamma_bar_per_epoch([3.0, 1.0, 4.0], [1.0, 1.0, 2.0], [0.0] * 3, 0.0, [0, 0, 1]).tolist()
    [2.0, 2.0]
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    _, groups = _split_by_epoch(epoch, a_arr.shape[0])
    c = _margin(a_arr, s_arr, d_arr)
    return np.array([_gamma_bar_compute(c[g], b_arr[g]) for g in groups], dtype=np.float64)


def r_quantiles(
    a: Any, b: Any, s: Any, delta: Any, q: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
) -> dict[str, float]:
    """Quantiles of r_t = (a_t - delta_t s_t) / b_t over the steps with b_t != 0.

    Steps whose r_t is not finite are left out. Keys are ``str(float(q_i))``
    (e.g. "0.05", "0.5"); values are nan when no step is left. Linear
    interpolation (numpy's default quantile method).

    >>> r_quantiles([1.0, 2.0, 3.0, 9.0], [1.0, 1.0, 1.0, 0.0], [0.0] * 4, 0.0, q=(0.0, 0.5))
    {'0.0': 1.0, '0.5': 2.0}
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    qs = [as_float(qi, "q") for qi in np.atleast_1d(np.asarray(q, dtype=object))]
    if any(not 0.0 <= qi <= 1.0 for qi in qs):
        raise ValueError(f"q must lie in [0, 1], got {qs}")
    c = _margin(a_arr, s_arr, d_arr)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = c / b_arr
    r = r[(b_arr != 0) & np.isfinite(r)]
    if r.size == 0:
        return {str(qi): float("nan") for qi in qs}
    vals = np.quantile(r, qs)
    return {str(qi): float(v) for qi, v in zip(qs, vals, strict=True)}


def fraction_obeying(a: Any, b: Any, s: Any, delta: Any, gamma: float) -> float:
    """Fraction of steps at which RP(gamma; delta) holds (see :func:`rp_holds`).

    nan for an empty set of steps or a nan gamma.

    >>> fraction_obeying([3.0, 2.0, 5.0, 0.0], [1.0, 1.0, 1.0, -1.0], [0.0] * 4, 0.0, 2.5)
    0.75
    """
    holds = rp_holds(a, b, s, gamma, delta)
    if holds.size == 0 or math.isnan(as_float(gamma, "gamma", allow_nan=True)):
        return float("nan")
    return float(np.mean(holds))


def star_convexity(a: Any, b: Any) -> np.ndarray:
    """Iterationwise star-convexity per step, RP(1; 0): a_t >= b_t.

    Non-finite entries give False.

    >>> star_convexity([2.0, 0.5], [1.0, 1.0]).tolist()
    [True, False]
    """
    a_arr = as_1d(a, "a")
    b_arr = as_1d(b, "b")
    check_same_length(a=a_arr, b=b_arr)
    return np.isfinite(a_arr) & np.isfinite(b_arr) & (a_arr >= b_arr)


def star_convex_fraction(a: Any, b: Any) -> float:
    """Fraction of steps with a_t >= b_t; nan for an empty set of steps.

    >>> star_convex_fraction([2.0, 0.5], [1.0, 1.0])
    0.5
    """
    holds = star_convexity(a, b)
    return float(np.mean(holds)) if holds.size else float("nan")
