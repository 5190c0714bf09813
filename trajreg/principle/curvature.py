"""Curvature along the path: sharpness, the edge of stability, critical sharpness.

With H_t the Hessian of step t's minibatch loss l_t at x_t (docs/principle.md, section
15):

- ``lambda_max``: the largest eigenvalue of H_t, by Lanczos on Hessian-vector products
  (``lanczos``, ``tridiagonal_top``);
- ``curv_update``: v_t^T H_t v_t / ||v_t||^2 (one Hessian-vector product);
- ``critical_sharpness``: 2 / alpha*, alpha* the smallest step along -v_t at which l_t
  rises (``critical_step``);
- ``lambda_max_precond``: the largest eigenvalue of P_t^-1 H_t with
  P_t = diag(sqrt(v_hat_t) + eps), Adam's preconditioner (``lanczos`` on the symmetric
  P^-1/2 H P^-1/2, which has the same spectrum);
- the edge of stability: (2 + 2 beta) / eta for heavy-ball momentum beta (2 / eta
  without), ``eos_threshold``; for Adam (2 + 2 beta_1) / ((1 - beta_1) eta), 38 / eta at
  beta_1 = 0.9, ``adam_threshold``.

Gradient descent on a quadratic with Hessian H diverges along an eigenvector whose
eigenvalue exceeds 2 / eta (Cohen et al. 2021); heavy-ball momentum beta moves the
threshold to (2 + 2 beta) / eta and Adam's preconditioned sharpness settles near
(2 + 2 beta_1) / ((1 - beta_1) eta) (Cohen et al. 2022). Along a direction v with
curvature c = v^T H v / ||v||^2, the quadratic model
l(x - alpha v) - l(x) = -alpha <grad l, v> + alpha^2 c ||v||^2 / 2 rises above 0 first at
alpha* = 2 <grad l, v> / (c ||v||^2): for v = grad l that is 2 / c, so the critical
sharpness 2 / alpha* is the curvature along the update on a quadratic (arXiv 2601.16979
track it with a few forward passes on large models; beyond a quadratic it also sees how
the curvature changes along the step).

Everything here is numpy and plain Python over callables: the Lanczos recurrence
takes the matrix-vector product and the inner product as functions, so the same code
runs on numpy arrays (the tests' quadratics) and on lists of torch tensors sharded over
ranks (``trajreg.record.curvature``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from scipy.linalg import eigh_tridiagonal

__all__ = ["CriticalStep", "LanczosResult", "adam_threshold", "critical_step", "eos_threshold",
           "fraction_above", "lanczos", "tridiagonal_top"]

V = TypeVar("V")


@dataclass(frozen=True)
class LanczosResult:
    """The top Ritz value after ``iterations`` steps and its residual bound: some
    eigenvalue of the operator lies within ``residual`` of ``value`` (the Ritz pair's
    residual norm |beta_k s_k|); ``converged`` when that bound is at most ``tol`` of
    |value| (or the Krylov space is exhausted: then exact)."""

    value: float
    iterations: int
    converged: bool
    residual: float  # relative: the bound divided by |value|


def _top_ritz(alpha: list[float], beta: list[float]) -> tuple[float, float]:
    """The top eigenvalue of the tridiagonal matrix and the last component of its
    eigenvector."""
    a = np.asarray(alpha, dtype=np.float64)
    if a.size == 1:
        return float(a[0]), 1.0
    values, vectors = eigh_tridiagonal(a, np.asarray(beta, dtype=np.float64),
                                       select="i", select_range=(a.size - 1, a.size - 1))
    return float(values[-1]), float(vectors[-1, -1])


def tridiagonal_top(alpha: Any, beta: Any) -> float:
    """The largest eigenvalue of the symmetric tridiagonal matrix with diagonal ``alpha``
    and off-diagonal ``beta`` (one shorter).

    >>> round(tridiagonal_top([2.0, 2.0], [1.0]), 12)
    3.0
    """
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or b.shape != (a.size - 1,):
        raise ValueError(f"alpha must be 1-D and non-empty, beta one shorter; got shapes "
                         f"{a.shape} and {b.shape}")
    return _top_ritz(a.tolist(), b.tolist())[0]


def lanczos(matvec: Callable[[V], V], start: V, *, dot: Callable[[V, V], float],
            axpby: Callable[[float, V, float, V], V], iterations: int = 20,
            tol: float = 1e-3) -> LanczosResult:
    """The largest eigenvalue of a symmetric operator by the Lanczos recurrence (no
    reorthogonalization: three vectors, so memory O(d); the top Ritz value converges
    first, and lost orthogonality only repeats converged values).

    Args:
        matvec: w -> A w.
        start: the first vector (any nonzero; a seeded random one).
        dot: the inner product (a sum over ranks for a sharded vector).
        axpby: (a, x, b, y) -> a x + b y, a new vector.
        iterations: the most Lanczos steps (matrix-vector products).
        tol: stop when the residual bound |beta_k s_k| of the top Ritz pair is at most
            ``tol`` |theta|: an eigenvalue lies within that of the value returned.

    >>> import numpy as np
    >>> A = np.diag([3.0, 1.0, -2.0])
    >>> r = lanczos(lambda w: A @ w, np.ones(3), dot=lambda x, y: float(x @ y),
    ...             axpby=lambda a, x, b, y: a * x + b * y, iterations=10)
    >>> round(r.value, 12), r.converged
    (3.0, True)
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    norm = math.sqrt(dot(start, start))
    if not (norm > 0 and math.isfinite(norm)):
        raise ValueError("the start vector must be nonzero and finite")
    q = axpby(1.0 / norm, start, 0.0, start)
    q_prev: V | None = None
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    theta, residual = math.nan, math.inf
    for k in range(iterations):
        w = matvec(q)
        alpha = dot(w, q)
        if not math.isfinite(alpha):
            return LanczosResult(math.nan, k + 1, False, math.nan)
        alphas.append(alpha)
        w = axpby(1.0, w, -alpha, q)
        if q_prev is not None:
            w = axpby(1.0, w, -beta, q_prev)
        beta = math.sqrt(max(dot(w, w), 0.0))
        theta, last = _top_ritz(alphas, betas)
        residual = abs(beta * last) / max(abs(theta), 1e-300)
        scale = max(abs(a) for a in alphas)
        if beta <= 1e-12 * max(scale, 1e-300):  # an invariant subspace: theta is exact
            return LanczosResult(theta, k + 1, True, 0.0)
        if residual <= tol:
            return LanczosResult(theta, k + 1, True, residual)
        betas.append(beta)
        q_prev, q = q, axpby(1.0 / beta, w, 0.0, w)
    return LanczosResult(theta, iterations, False, residual)


@dataclass(frozen=True)
class CriticalStep:
    """The smallest step alpha along -v at which the loss rises above l(x), bracketed
    within ``rtol``; ``found`` False when no step up to the largest tried rose (then
    ``alpha`` is that largest step, a lower bound). ``evaluations`` forward passes."""

    alpha: float
    found: bool
    evaluations: int

    @property
    def sharpness(self) -> float:
        """2 / alpha: the curvature a quadratic with that critical step has (nan when no
        rise was found)."""
        return 2.0 / self.alpha if self.found and self.alpha > 0 else math.nan


def critical_step(loss_at: Callable[[float], float], base: float, alpha0: float, *,
                  grow: float = 2.0, max_steps: int = 20, bisections: int = 6
                  ) -> CriticalStep:
    """The smallest alpha > 0 with ``loss_at(alpha) > base``: from ``alpha0`` (e.g. the
    step's learning rate) up or down by factors ``grow`` until the loss crosses ``base``,
    then ``bisections`` geometric bisections of the bracket.

    >>> step = critical_step(lambda a: (1 - a) ** 2, 1.0, 0.1)  # rises again beyond 2
    >>> round(step.alpha, 1), round(step.sharpness, 1)
    (2.0, 1.0)
    """
    if not (alpha0 > 0 and math.isfinite(alpha0)):
        raise ValueError(f"alpha0 must be positive and finite, got {alpha0}")
    n = 0

    def rises(alpha: float) -> bool:
        nonlocal n
        n += 1
        value = loss_at(alpha)
        return not (value <= base)  # nan counts as a rise: the step broke the loss

    low, high = 0.0, alpha0
    if rises(alpha0):
        for _ in range(max_steps):  # shrink until it no longer rises
            low = high / grow
            if not rises(low):
                break
            high, low = low, 0.0
        else:
            return CriticalStep(high, True, n)  # rises at every step tried
    else:
        low = alpha0
        for _ in range(max_steps):
            high = low * grow
            if rises(high):
                break
            low = high
        else:
            return CriticalStep(high, False, n)
    for _ in range(bisections):
        mid = math.sqrt(low * high) if low > 0 else high / grow
        if rises(mid):
            high = mid
        else:
            low = mid
    return CriticalStep(high, True, n)


def eos_threshold(lr: Any, momentum: float = 0.0) -> np.ndarray:
    """The edge of stability of (heavy-ball) gradient descent: (2 + 2 beta) / eta.

    >>> eos_threshold([0.1, 0.01]).tolist()
    [20.0, 200.0]
    """
    eta = np.asarray(lr, dtype=np.float64)
    return (2.0 + 2.0 * float(momentum)) / eta


def adam_threshold(lr: Any, beta1: float = 0.9) -> np.ndarray:
    """Adam's preconditioned edge of stability: (2 + 2 beta_1) / ((1 - beta_1) eta), 38/eta
    at beta_1 = 0.9.

    >>> adam_threshold([0.001]).round(6).tolist()
    [38000.0]
    """
    eta = np.asarray(lr, dtype=np.float64)
    return (2.0 + 2.0 * float(beta1)) / ((1.0 - float(beta1)) * eta)


def fraction_above(values: Any, thresholds: Any) -> float:
    """The fraction of the finite values above their thresholds (nan when none).

    >>> fraction_above([1.0, 3.0, float("nan")], [2.0, 2.0, 2.0])
    0.5
    """
    v = np.asarray(values, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), v.shape)
    ok = np.isfinite(v) & np.isfinite(t)
    return float(np.mean(v[ok] > t[ok])) if ok.any() else math.nan
