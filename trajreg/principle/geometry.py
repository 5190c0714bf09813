"""Geometry of the trajectory and of the gradients along it (docs/principle.md, section 14).

With g_t the minibatch gradient the optimizer sees at x_t and D_t = ||x_t - x*||^2:

- g_dot_t = <g_t, x_t - x*>, g_norm2_t = ||g_t||^2;
- restricted secant inequality RSI(mu): g_dot_t >= mu D_t; per step
  rsi_t = g_dot_t / D_t;
- error bound EB(L): ||g_t|| <= L ||x_t - x*||; per step eb_t = sqrt(g_norm2_t / D_t);
- cosines cos_g_t = g_dot_t / sqrt(g_norm2_t D_t) and cos_v_t = a_t / sqrt(s_t D_t);
- window constants mu_hat_eps, L_hat_eps with the "at most floor(eps n) steps
  violate" convention of gamma_hat;
- path ratio sum_t ||u_t|| / ||x_0 - x*||, and the monotonic linear
  interpolation summary of the loss on the segment from x_0 to x*.

Guille-Escuret, Ramos, Goujaud, Gidel, Mitliagkas, "No Wrong Turns: The Simple
Geometry Of Neural Networks Optimization Paths" (arXiv:2306.11922, 2023);
Lucas, Bae, Zhang, Fort, Zemel, Grosse, "Analyzing Monotonic Linear
Interpolation in Neural Network Loss Landscapes" (ICML 2021,
arXiv:2104.11044).

Every ratio is nan (never inf) where its denominator is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trajreg.principle._validate import (
    allowed_violations,
    as_1d,
    as_2d,
    as_float,
    check_eps,
    check_nonnegative,
    check_same_length,
    to_numpy,
)
from trajreg.principle.quantities import cosine

__all__ = [
    "GradientQuantities",
    "L_hat",
    "MLISummary",
    "cos_g",
    "cos_v",
    "eb",
    "fraction_positive",
    "gradient_quantities",
    "implied_gamma",
    "lower_quantile",
    "mli_alphas",
    "mli_summary",
    "mu_hat",
    "path_ratio",
    "rsi",
    "rsi_eb_ratio",
    "upper_quantile",
]


@dataclass(frozen=True, eq=False)
class GradientQuantities:
    """Per-row gradient quantities of a block of iterates and their gradients.

    Attributes:
        D: shape (n,), D_t = ||x_t - x*||^2.
        g_dot: shape (n,), <g_t, x_t - x*>.
        g_norm2: shape (n,), ||g_t||^2.
    """

    D: np.ndarray
    g_dot: np.ndarray
    g_norm2: np.ndarray


def gradient_quantities(xs: Any, grads: Any, x_star: Any) -> GradientQuantities:
    """D_t, g_dot_t = <g_t, x_t - x*> and g_norm2_t = ||g_t||^2 for a block of rows.

    Row t of ``grads`` is the gradient at row t of ``xs``. Rows are independent,
    so any blocking of a long trajectory gives the same numbers (row-wise sums
    in float64, as in trajectory_quantities; no overlap row is needed).

    Args:
        xs: shape (n, d), iterates.
        grads: shape (n, d), the gradients at those iterates.
        x_star: shape (d,), the reference point.

    >>> q = gradient_quantities([[3.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 4.0]], [0.0, 0.0])
    >>> q.D.tolist(), q.g_dot.tolist(), q.g_norm2.tolist()
    ([9.0, 4.0], [3.0, 8.0], [2.0, 16.0])
    """
    xs_arr = as_2d(xs, "xs")
    g_arr = as_2d(grads, "grads")
    if g_arr.shape != xs_arr.shape:
        raise ValueError(f"grads must have the shape of xs {xs_arr.shape}, got {g_arr.shape}")
    star = as_1d(x_star, "x_star")
    if star.shape[0] != xs_arr.shape[1]:
        raise ValueError(f"x_star has length {star.shape[0]} but the rows of xs have "
                         f"length {xs_arr.shape[1]}")
    diff = xs_arr - star
    return GradientQuantities(D=np.sum(diff * diff, axis=1),
                              g_dot=np.sum(g_arr * diff, axis=1),
                              g_norm2=np.sum(g_arr * g_arr, axis=1))


def _with_D(values: np.ndarray, D: Any, vname: str) -> np.ndarray:
    """D as float64 of the length of ``values`` (a trailing extra entry is dropped)."""
    D_arr = as_1d(D, "D")
    if D_arr.shape[0] == values.shape[0] + 1:
        D_arr = D_arr[:-1]
    check_same_length(**{vname: values, "D": D_arr})
    check_nonnegative(D_arr, "D")
    return D_arr


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = num / den
    return np.where(den == 0, np.nan, out)


def rsi(g_dot: Any, D: Any) -> np.ndarray:
    """Restricted secant ratio rsi_t = <g_t, x_t - x*> / D_t (nan where D_t = 0).

    RSI(mu) holds at step t iff rsi_t >= mu. ``D`` may have one extra trailing
    entry (as returned by trajectory_quantities); it is ignored.

    >>> rsi([3.0, 8.0, 1.0], [9.0, 4.0, 0.0]).tolist()
    [0.3333333333333333, 2.0, nan]
    """
    g = as_1d(g_dot, "g_dot")
    return _safe_div(g, _with_D(g, D, "g_dot"))


def eb(g_norm2: Any, D: Any) -> np.ndarray:
    """Error-bound ratio eb_t = ||g_t|| / ||x_t - x*|| = sqrt(g_norm2_t / D_t) (nan where D_t = 0).

    EB(L) holds at step t iff eb_t <= L.

    >>> eb([2.0, 16.0, 1.0], [8.0, 4.0, 0.0]).tolist()
    [0.5, 2.0, nan]
    """
    g = as_1d(g_norm2, "g_norm2")
    check_nonnegative(g, "g_norm2")
    return np.sqrt(_safe_div(g, _with_D(g, D, "g_norm2")))


def cos_g(g_dot: Any, D: Any, g_norm2: Any) -> np.ndarray:
    """Cosine between the gradient and x_t - x*: g_dot_t / sqrt(g_norm2_t D_t) (nan where 0).

    The argument order is that of :func:`trajreg.principle.cosine` (inner
    product, D, squared norm).

    >>> cos_g([3.0, 8.0, 0.0], [9.0, 4.0, 1.0], [1.0, 16.0, 0.0]).tolist()
    [1.0, 1.0, nan]
    """
    return cosine(g_dot, D, g_norm2)


def cos_v(a: Any, D: Any, s: Any) -> np.ndarray:
    """Cosine between the update direction v_t and x_t - x*: a_t / sqrt(s_t D_t) (nan where 0).

    The same as :func:`trajreg.principle.cosine` (c_t); for SGD without weight
    decay v_t = g_t and cos_v = cos_g.

    >>> cos_v([12.0, 0.0], [9.0, 1.0], [16.0, 0.0]).tolist()
    [1.0, nan]
    """
    return cosine(a, D, s)


def _sorted_non_nan(values: Any) -> np.ndarray:
    arr = as_1d(values, "values")
    return np.sort(arr[~np.isnan(arr)])


def lower_quantile(values: Any, eps: float = 0.0) -> float:
    """Largest m with at most floor(eps n) values below m: the (floor(eps n) + 1)-th smallest.

    The convention of gamma_hat: a step "violates" a lower bound m when its
    value is < m, and at most floor(eps n) may. nan entries are left out (n
    counts the rest); nan when none is left. eps = 0 gives the minimum.

    >>> lower_quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.2), lower_quantile([5.0, 1.0, 3.0], 0.0)
    (2.0, 1.0)
    """
    arr = _sorted_non_nan(values)
    e = check_eps(eps)
    if arr.size == 0:
        return float("nan")
    return float(arr[allowed_violations(arr.size, e)])


def upper_quantile(values: Any, eps: float = 0.0) -> float:
    """Smallest M with at most floor(eps n) values above M: the (floor(eps n) + 1)-th largest.

    The mirror image of :func:`lower_quantile`; eps = 0 gives the maximum.

    >>> upper_quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.2), upper_quantile([5.0, 1.0, 3.0], 0.0)
    (4.0, 5.0)
    """
    arr = _sorted_non_nan(values)
    e = check_eps(eps)
    if arr.size == 0:
        return float("nan")
    return float(arr[arr.size - 1 - allowed_violations(arr.size, e)])


def mu_hat(rsi_values: Any, eps: float = 0.0) -> float:
    """mu_hat_eps = lower_quantile(rsi, eps): the largest mu violated at <= floor(eps n) steps.

    It equals gamma_hat_eps(rsi, 1, 0, 0) (every "gap" 1, no delta term).
    Steps with D_t = 0 (nan rsi) are left out.

    >>> mu_hat([0.5, 0.1, 0.3, 0.2], 0.25)
    0.2
    """
    return lower_quantile(rsi_values, eps)


def L_hat(eb_values: Any, eps: float = 0.0) -> float:
    """L_hat_eps = upper_quantile(eb, eps): the smallest L violated at <= floor(eps n) steps.

    >>> L_hat([0.5, 2.0, 1.0, 0.7], 0.25)
    1.0
    """
    return upper_quantile(eb_values, eps)


def fraction_positive(cos: Any) -> float:
    """Fraction of steps with a positive cosine, over the steps where it is defined (not nan).

    nan when no cosine is defined.

    >>> fraction_positive([0.5, -0.1, 0.2, float("nan")])
    0.6666666666666666
    """
    arr = as_1d(cos, "cos")
    arr = arr[~np.isnan(arr)]
    return float(np.mean(arr > 0)) if arr.size else float("nan")


def rsi_eb_ratio(mu: float, L: float) -> float:
    """mu / L^2 (nan when L = 0 or an input is nan).

    For a function satisfying RSI(mu) and EB(L) around x*, gradient descent
    with step eta contracts the squared distance by the factor
    1 - 2 eta mu + eta^2 L^2, best at eta = mu / L^2 with factor
    1 - mu^2 / L^2: the ratio is the optimal step and mu^2 / L^2 the rate.

    >>> rsi_eb_ratio(0.5, 2.0)
    0.125
    """
    m = as_float(mu, "mu", allow_nan=True)
    ell = as_float(L, "L", allow_nan=True)
    if math.isnan(m) or math.isnan(ell) or ell == 0:
        return float("nan")
    return m / (ell * ell)


def implied_gamma(mu: float, L: float, K: float, delta: Any) -> float:
    """gamma of RP(gamma; delta) implied by RSI(mu), EB(L), b_t <= K D_t: (mu - delta L^2) / K.

    For SGD without weight decay (v_t = g_t, so a_t = g_dot_t, s_t = g_norm2_t)
    at a step with a_t >= mu D_t, s_t <= L^2 D_t and b_t <= K D_t:
    a_t - delta_t s_t >= (mu - delta_t L^2) D_t, which is >= 0 when
    mu >= delta_t L^2; then for b_t > 0, D_t >= b_t / K gives
    a_t - delta_t s_t >= ((mu - delta_t L^2) / K) b_t, and for b_t <= 0 the
    principle holds for every gamma >= 0. So RP(gamma; delta) holds at the step
    with gamma = (mu - max_t delta_t L^2) / K (+inf when K <= 0). nan when
    mu < max_t delta_t L^2 (the three conditions then imply nothing), or an
    input is nan. The argument is algebraic in (a, s, b, D), so it applies to
    any optimizer with rsi and eb computed from v_t in place of g_t.

    ``delta`` is a scalar or per-step values (the largest is used).

    >>> implied_gamma(1.0, 1.0, 2.0, 0.5)
    0.25
    """
    m = as_float(mu, "mu", allow_nan=True)
    ell = as_float(L, "L", allow_nan=True)
    kk = as_float(K, "K", allow_nan=True)
    d = to_numpy(delta, "delta").ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError("delta must be a finite scalar or a non-empty array of finite values")
    if math.isnan(m) or math.isnan(ell) or math.isnan(kk):
        return float("nan")
    margin = m - float(np.max(d)) * ell * ell
    if not margin >= 0:
        return float("nan")
    if kk <= 0:
        return float("inf")
    return margin / kk


def path_ratio(step_norms: Any, x0_minus_xstar_norm: float) -> float:
    """Path ratio sum_t ||u_t|| / ||x_0 - x*|| (1 for a straight path ending at x*).

    ``step_norms`` are the update norms ||u_t|| = ||x_t - x_{t+1}|| (e.g.
    sqrt(s_u)); by the triangle inequality the ratio is >= 1 when the steps
    lead from x_0 to x* = x_T. nan when the distance is 0.

    >>> path_ratio([3.0, 4.0], 5.0)
    1.4
    """
    norms = as_1d(step_norms, "step_norms")
    check_nonnegative(norms, "step_norms")
    dist = as_float(x0_minus_xstar_norm, "x0_minus_xstar_norm", allow_nan=True)
    if dist < 0:
        raise ValueError(f"x0_minus_xstar_norm must be >= 0, got {dist}")
    if dist == 0 or math.isnan(dist):
        return float("nan")
    return float(np.sum(norms)) / dist


def mli_alphas(n: int = 21) -> np.ndarray:
    """n equally spaced interpolation coefficients alpha in [0, 1] (both ends included).

    >>> mli_alphas(5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    return np.linspace(0.0, 1.0, int(n))


@dataclass(frozen=True)
class MLISummary:
    """Summary of the loss along the segment x_0 + alpha (x* - x_0).

    Attributes:
        monotone: max_bump <= tol (non-increasing up to the tolerance).
        max_bump: max over alpha_i <= alpha_j of loss_j - loss_i, >= 0: the
            largest rise of the loss above its running minimum.
        bump_from, bump_to: the alphas (alpha_i, alpha_j) of that rise (equal
            when max_bump is 0; nan when the loss is not finite).
        tol: the tolerance used.
    """

    monotone: bool
    max_bump: float
    bump_from: float
    bump_to: float
    tol: float


def mli_summary(alpha: Any, loss: Any, rtol: float = 1e-6, atol: float = 0.0) -> MLISummary:
    """Monotonic linear interpolation: is the loss non-increasing in alpha, and its largest bump.

    With losses l_0, ..., l_{n-1} at increasing alpha_0 < ... < alpha_{n-1}
    (typically F(x_0 + alpha (x* - x_0)) at :func:`mli_alphas`),

        max_bump = max_{i <= j} (l_j - l_i) = max_j (l_j - min_{i <= j} l_i) >= 0,

    the largest rise of the loss above its running minimum: 0 exactly when the
    sampled curve is non-increasing. It is the height of the largest barrier
    met when walking from x_0 towards x*, the quantity Lucas et al. (2021) use
    to say how far a path is from having the MLI property (they call a path
    monotone when the loss never increases along it). monotone is
    max_bump <= tol with tol = atol + rtol max_i |l_i|: loss evaluations in
    float32 differ from run to run by about 1e-7 relative, so the default
    rtol = 1e-6 ignores rises at that level. A non-finite loss gives
    monotone False and nan for max_bump and its alphas.

    Args:
        alpha: shape (n,), strictly increasing, n >= 2.
        loss: shape (n,), the loss at each alpha.
        rtol: relative tolerance, >= 0.
        atol: absolute tolerance, >= 0.

    >>> mli_summary(mli_alphas(5), [2.0, 1.0, 1.5, 0.5, 0.4])
    MLISummary(monotone=False, max_bump=0.5, bump_from=0.25, bump_to=0.5, tol=2e-06)
    """
    al = as_1d(alpha, "alpha")
    ls = as_1d(loss, "loss")
    check_same_length(alpha=al, loss=ls)
    if al.shape[0] < 2:
        raise ValueError(f"alpha must have at least 2 entries, got {al.shape[0]}")
    if not np.all(np.isfinite(al)) or np.any(np.diff(al) <= 0):
        raise ValueError("alpha must be finite and strictly increasing")
    rt = as_float(rtol, "rtol", allow_inf=False)
    at = as_float(atol, "atol", allow_inf=False)
    if rt < 0 or at < 0:
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rt}, atol={at}")
    if not np.all(np.isfinite(ls)):
        nan = float("nan")
        return MLISummary(False, nan, nan, nan, nan)
    tol = at + rt * float(np.max(np.abs(ls)))
    run_min = np.minimum.accumulate(ls)
    rise = ls - run_min
    j = int(np.argmax(rise))
    i = int(np.argmin(ls[: j + 1]))
    bump = float(rise[j])
    return MLISummary(monotone=bump <= tol, max_bump=bump, bump_from=float(al[i]),
                      bump_to=float(al[j]), tol=tol)
