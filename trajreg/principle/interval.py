"""Confidence intervals from a random sample of steps (docs/principle.md, section 12).

The record mode ``sample`` keeps each optimizer step independently with
probability R and measures a_t, b_t, s_t exactly on the kept steps only. The
kept steps of a window are then a random sample of the window's steps, and
every estimate computed from them (gamma_hat_eps, kappa_hat_eps, gamma_bar)
comes with a confidence interval for the value the *full* window would have
given.

Intervals are :class:`Interval` ``(low, high)`` named tuples. A side is
``None`` when the sample is too small to bound the value on that side at the
requested confidence; a float bound may be +-inf when the data say so (e.g. an
upper bound +inf on gamma when arbitrarily large gamma are consistent with the
sample).

Sampling model: conditional on its size n, a Bernoulli(R) sample of a window of
N steps is a simple random sample without replacement; the binomial laws used
below treat it as n independent draws. For a sampling fraction n / N well
below 1 the difference is negligible, and it typically errs towards higher
coverage (the hypergeometric count of a fixed set is less spread than the
binomial one: Hoeffding 1963, smaller in convex order).

scipy is imported inside the functions that need it (it is slow to import).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from trajreg.principle._validate import (
    allowed_violations,
    as_1d,
    as_float,
    check_eps,
    check_same_length,
)
from trajreg.principle.estimate import (
    _gamma_hat_compute,
    _margin,
    _raw_update,
    _validate_steps,
)

__all__ = [
    "Interval",
    "OrderRanks",
    "gamma_bar_interval",
    "gamma_hat_interval",
    "kappa_bar_interval",
    "kappa_hat_interval",
    "mean_interval",
    "order_statistic_ranks",
    "quantile_interval",
    "ratio_interval",
]


class Interval(NamedTuple):
    """A confidence interval (low, high); a side is None when the sample cannot bound it."""

    low: float | None
    high: float | None


class OrderRanks(NamedTuple):
    """1-based ranks (low, high) of the order statistics bounding a quantile.

    ``coverage`` = P(low <= B <= high - 1) for B ~ Binomial(n, q), the exact
    coverage of [X_(low), X_(high)] for a continuous population (a lower bound
    on it otherwise); a missing rank (None) counts as -inf / +inf.
    """

    low: int | None
    high: int | None
    coverage: float


def _check_confidence(confidence: Any) -> float:
    value = as_float(confidence, "confidence")
    if not 0.0 < value < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {value}")
    return value


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return int(n)


@functools.lru_cache(maxsize=4096)
def _count_bounds(n: int, q: float, confidence: float) -> tuple[int, int, float]:
    """(c_lo, c_hi, coverage) for B ~ Binomial(n, q), alpha = 1 - confidence.

    c_lo = the largest c with P(B <= c) <= alpha/2 (-1 if none),
    c_hi = the smallest c with P(B > c) <= alpha/2 (n at most),
    coverage = P(c_lo < B <= c_hi).
    """
    from scipy.stats import binom

    # A tail probability within 1e-12 of alpha/2 counts as equal to it, so that
    # exact ties such as q^n = alpha/2 (0.05^1 at 90%) do not hinge on rounding.
    half = (1.0 - confidence) / 2.0 + 1e-12
    c = np.arange(n + 1)
    cdf = binom.cdf(c, n, q)  # P(B <= c)
    sf = binom.sf(c, n, q)  # P(B > c)
    below = np.flatnonzero(cdf <= half)
    c_lo = int(below[-1]) if below.size else -1
    c_hi = int(np.flatnonzero(sf <= half)[0])  # sf[n] = 0, so this exists
    coverage = float(cdf[c_hi] - (cdf[c_lo] if c_lo >= 0 else 0.0))
    return c_lo, c_hi, coverage


def order_statistic_ranks(n: int, q: float, confidence: float = 0.95) -> OrderRanks:
    """Ranks (l, u) of the distribution-free order-statistic interval for the q-quantile.

    From n independent draws of a population with q-quantile xi_q and order
    statistics X_(1) <= ... <= X_(n), B = #{X_i <= xi_q} ~ Binomial(n, q), and

        P(X_(l) <= xi_q <= X_(u)) >= P(l <= B <= u - 1)

    (equality for a continuous population). The ranks are equal-tailed, with
    alpha = 1 - confidence:

        l = the largest rank with P(B <= l - 1) <= alpha/2,
        u = the smallest rank with P(B >= u) <= alpha/2,

    so the coverage P(l <= B <= u - 1) is at least ``confidence``. ``low`` is
    None when no rank qualifies, i.e. when (1 - q)^n > alpha/2: the sample is too
    small for a lower bound (for q = 0.05 and 95% that is n < 72, since
    0.95^71 = 0.0262 > 0.025 >= 0.95^72 = 0.0249). ``high`` is None when
    q^n > alpha/2 (n < 2 for q = 0.05). q = 0 (the minimum) is allowed: then
    l is None and u = 1, the sample minimum, an upper bound with certainty.

    Args:
        n: sample size (>= 0).
        q: the quantile level, in [0, 1).
        confidence: in (0, 1).

    >>> r = order_statistic_ranks(72, 0.05)
    >>> r.low, r.high, round(r.coverage, 4)
    (1, 9, 0.9655)
    >>> order_statistic_ranks(71, 0.05).low is None
    True
    """
    n_int = _check_n(n)
    q_f = as_float(q, "q")
    if not 0.0 <= q_f < 1.0:
        raise ValueError(f"q must be in [0, 1), got {q_f}")
    conf = _check_confidence(confidence)
    if n_int == 0:
        return OrderRanks(None, None, 0.0)
    c_lo, c_hi, coverage = _count_bounds(n_int, q_f, conf)
    low = c_lo + 1 if c_lo >= 0 else None
    high = c_hi + 1 if c_hi < n_int else None
    return OrderRanks(low, high, coverage)


def quantile_interval(values: Any, q: float, confidence: float = 0.95) -> Interval:
    """Distribution-free confidence interval for the population q-quantile.

    (X_(l), X_(u)) with the ranks of :func:`order_statistic_ranks`: for n
    independent draws, P(X_(l) <= xi_q <= X_(u)) >= ``confidence`` whatever the
    population's distribution (xi_q = inf{x : F(x) >= q}). A side is None when
    the sample is too small to bound it; for a two-sided 95% interval of the 5%
    quantile that is n < 72 for the lower side. nan values are left out (n
    counts the rest); +-inf values are ordered as numbers. The sample quantile
    X_(floor(q n) + 1) (the convention of gamma_hat) lies inside.

    Args:
        values: the sample, shape (n,).
        q: quantile level in [0, 1) (0 gives only the upper bound: the sample minimum).
        confidence: in (0, 1).

    >>> quantile_interval(np.arange(1.0, 101.0), 0.05)
    Interval(low=1.0, high=11.0)
    >>> quantile_interval([3.0, 1.0, 2.0], 0.5)
    Interval(low=None, high=None)
    """
    arr = as_1d(values, "values")
    arr = np.sort(arr[~np.isnan(arr)])
    ranks = order_statistic_ranks(arr.shape[0], q, confidence)
    low = float(arr[ranks.low - 1]) if ranks.low is not None else None
    high = float(arr[ranks.high - 1]) if ranks.high is not None else None
    return Interval(low, high)


def _violation_interval(c: np.ndarray, b: np.ndarray, eps: float, conf: float) -> Interval:
    n = c.shape[0]
    if n == 0:
        return Interval(None, None)
    c_lo, c_hi, _ = _count_bounds(n, eps, conf)
    k = allowed_violations(n, eps)
    low = None
    if c_lo >= 0:
        low = _gamma_hat_compute(c, b, min(c_lo, k))
    high = None
    if c_hi < n:
        high = _gamma_hat_compute(c, b, max(c_hi, k))
    return Interval(low, high)


def gamma_hat_interval(
    a: Any, b: Any, s: Any, delta: Any, eps: float, confidence: float = 0.95
) -> Interval:
    """Confidence interval for the full window's gamma_hat_eps from a random sample of its steps.

    ``a``, ``b``, ``s``, ``delta`` hold the n sampled steps. With
    V(gamma) = #{sampled steps violating RP(gamma; delta)} (the count gamma_hat
    uses: non-finite steps and b_t = 0 steps with c_t < 0 always violate,
    b_t > 0 steps when gamma > r_t, b_t < 0 steps when gamma < r_t), and with
    alpha = 1 - confidence and B ~ Binomial(n, eps),

        c_lo = the largest c with P(B <= c) <= alpha/2   (none: no lower bound),
        c_hi = the smallest c with P(B > c) <= alpha/2   (c_hi = n: no upper bound),
        low  = max{gamma : V(gamma) <= c_lo},
        high = max{gamma : V(gamma) <= c_hi},

    i.e. gamma_hat of the sample with c_lo and c_hi allowed violations in place
    of floor(eps n) (c_lo is taken at most, c_hi at least, floor(eps n), so the
    sample's own gamma_hat_eps lies inside; this never binds in practice).

    Why it covers the full window's gamma* = gamma_hat_eps: at gamma* at most
    floor(eps N) <= eps N of the window's N steps violate, a fixed set, so its
    sampled count is at most Binomial(n, eps) in law and exceeds c_hi with
    probability <= alpha/2; otherwise gamma* is admissible at c_hi and
    gamma* <= high. Just above gamma* more than eps N steps violate, so their
    sampled count is <= c_lo with probability <= alpha/2. When every step has
    b_t >= 0, V only grows with gamma and that is the only way to get
    low > gamma*; the interval is then exactly the order-statistic interval of
    :func:`quantile_interval` for the eps-quantile of r_t, and the coverage is
    at least ``confidence``. A step with b_t < 0 and r_t > gamma* (it violates at
    gamma* and stops violating above r_t) can lower V again above gamma*; each
    distinct such r_t adds at most alpha/2 to the lower side's miss probability
    (a union bound over the stretches between them, on each of which V only
    grows), with m the number of such values. Such steps are
    among the at most floor(eps N) violators at gamma*. So the lower side
    misses with probability at most (1 + m) alpha/2 and the interval with at
    most (2 + m) alpha/2; the tests simulate windows with steps of both signs
    of b_t and check the coverage.

    eps = 0 (a minimum): c_lo does not exist and c_hi = 0, so the interval is
    (None, the sample's gamma_hat_0): only an upper bound, and a certain one.
    The lower bound exists when (1 - eps)^n <= alpha/2: n >= 72 for eps = 0.05
    at 95%.

    Args:
        a: the sampled steps' a_t, shape (n,).
        b: the sampled steps' b_t, shape (n,).
        s: the sampled steps' s_t, shape (n,); s >= 0.
        delta: scalar or shape (n,).
        eps: allowed fraction of violating steps, in [0, 1).
        confidence: in (0, 1).

    >>> r = np.arange(1.0, 101.0)  # b = 1, s = 0: r_t = a_t
    >>> gamma_hat_interval(r, np.ones(100), np.zeros(100), 0.0, 0.05)
    Interval(low=1.0, high=11.0)
    >>> gamma_hat_interval(r, np.ones(100), np.zeros(100), 0.0, 0.0)
    Interval(low=None, high=1.0)
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    e = check_eps(eps)
    conf = _check_confidence(confidence)
    return _violation_interval(_margin(a_arr, s_arr, d_arr), b_arr, e, conf)


def kappa_hat_interval(
    a: Any, b: Any, s: Any, lrs: Any, eps: float, confidence: float = 0.95
) -> Interval:
    """Confidence interval for kappa_hat_eps: gamma_hat_interval(eta a, b, eta^2 s, 1/2, eps).

    The same construction as :func:`gamma_hat_interval` on the update form of
    the principle (see :func:`trajreg.principle.kappa_hat`).

    >>> a = np.arange(1.0, 101.0)
    >>> kappa_hat_interval(2.0 * a, np.ones(100), np.zeros(100), np.full(100, 0.5), 0.05)
    Interval(low=1.0, high=11.0)
    """
    a_u, s_u = _raw_update(a, s, lrs)
    return gamma_hat_interval(a_u, b, s_u, 0.5, eps, confidence)


def _t_quantile(df: int, conf: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + conf / 2.0, df))


def mean_interval(values: Any, confidence: float = 0.95) -> Interval:
    """Student-t confidence interval for a population mean: mean +- t_{n-1} sd / sqrt(n).

    sd is the sample standard deviation (ddof = 1) and t_{n-1} the
    (1 + confidence)/2 quantile of Student's t with n - 1 degrees of freedom.
    Exact for normal data and asymptotically valid (central limit theorem) for
    any population with finite variance. (None, None) for n < 2 or non-finite
    values.

    >>> [round(v, 3) for v in mean_interval([1.0, 2.0, 3.0], 0.95)]
    [-0.484, 4.484]
    """
    arr = as_1d(values, "values")
    conf = _check_confidence(confidence)
    n = arr.shape[0]
    if n < 2 or not np.all(np.isfinite(arr)):
        return Interval(None, None)
    m = float(np.mean(arr))
    half = _t_quantile(n - 1, conf) * float(np.std(arr, ddof=1)) / math.sqrt(n)
    return Interval(m - half, m + half)


def _fieller(x: np.ndarray, y: np.ndarray, conf: float) -> Interval:
    n = x.shape[0]
    if n < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return Interval(None, None)
    mx, my = float(np.mean(x)), float(np.mean(y))
    cov = np.cov(np.stack([x, y]), ddof=1) / n  # covariance matrix of the two means
    vxx, vxy, vyy = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    t2 = _t_quantile(n - 1, conf) ** 2
    # (mx - rho my)^2 <= t^2 (vxx - 2 rho vxy + rho^2 vyy):  A rho^2 + B rho + C <= 0.
    qa = my * my - t2 * vyy
    qb = -2.0 * (mx * my - t2 * vxy)
    qc = mx * mx - t2 * vxx
    if qa <= 0.0:  # the denominator's mean is not clearly away from 0: unbounded set
        return Interval(None, None)
    disc = max(qb * qb - 4.0 * qa * qc, 0.0)  # >= 0 in exact arithmetic (rho = mx/my is inside)
    root = math.sqrt(disc)
    lo = (-qb - root) / (2.0 * qa)
    hi = (-qb + root) / (2.0 * qa)
    est = mx / my
    return Interval(min(lo, est), max(hi, est))


def ratio_interval(num: Any, den: Any, confidence: float = 0.95) -> Interval:
    """Fieller confidence interval for a ratio of means, rho = E[num] / E[den].

    The set of rho for which mean(num) - rho mean(den) is not significantly
    different from 0 by a Student-t test with n - 1 degrees of freedom:

        (mean(x) - rho mean(y))^2 <= t^2 (v_xx - 2 rho v_xy + rho^2 v_yy),

    with v the sample covariances of the two means (ddof = 1, divided by n).
    It is the inversion of the linearised ratio (the delta method's statistic,
    x_t - rho y_t), but without linearising around the estimate, so it stays
    honest when mean(den) is close to 0: if t^2 v_yy >= mean(y)^2 the set is
    unbounded and (None, None) is returned. Otherwise it is a finite interval
    containing the estimate mean(x) / mean(y). Asymptotically valid (central
    limit theorem); (None, None) for n < 2 or non-finite values.

    >>> lo, hi = ratio_interval([2.0, 4.1, 5.9, 8.0], [1.0, 2.0, 3.0, 4.0])
    >>> bool(lo < 2.0 < hi), round(hi - lo, 3)
    (True, 0.2)
    """
    x = as_1d(num, "num")
    y = as_1d(den, "den")
    check_same_length(num=x, den=y)
    return _fieller(x, y, _check_confidence(confidence))


def gamma_bar_interval(a: Any, b: Any, s: Any, delta: Any, confidence: float = 0.95) -> Interval:
    """Confidence interval for the full window's gamma_bar from a random sample of its steps.

    gamma_bar = sum_t (a_t - delta_t s_t) / sum_t b_t is a ratio of means (of
    c_t = a_t - delta_t s_t and b_t), and the sample's gamma_bar is the ratio
    estimator of it; the interval is :func:`ratio_interval` (Fieller) on
    (c_t, b_t) over the sampled steps. Asymptotic, and (None, None) when the
    sampled b_t do not bound their mean away from 0.

    >>> lo, hi = gamma_bar_interval([2.0, 4.1, 5.9, 8.0], [1.0, 2.0, 3.0, 4.0], [0.0] * 4, 0.0)
    >>> bool(lo < 2.0 < hi)
    True
    """
    a_arr, b_arr, s_arr, d_arr = _validate_steps(a, b, s, delta)
    return _fieller(_margin(a_arr, s_arr, d_arr), b_arr, _check_confidence(confidence))


def kappa_bar_interval(a: Any, b: Any, s: Any, lrs: Any, confidence: float = 0.95) -> Interval:
    """Confidence interval for kappa_bar: gamma_bar_interval(eta a, b, eta^2 s, 1/2).

    >>> lo, hi = kappa_bar_interval([2.0, 4.1, 5.9, 8.0], [1.0, 2.0, 3.0, 4.0], [0.0] * 4,
    ...                             [0.5] * 4)
    >>> bool(lo < 1.0 < hi)
    True
    """
    a_u, s_u = _raw_update(a, s, lrs)
    return gamma_bar_interval(a_u, b, s_u, 0.5, confidence)
