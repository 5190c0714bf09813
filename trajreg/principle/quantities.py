"""Per-step quantities of an optimisation trajectory (docs/principle.md, "Per-step quantities").

Notation: iterates x_t (flat parameter vectors), reference point x*, learning
rate eta_t, update u_t = x_t - x_{t+1}, effective gradient v_t = u_t / eta_t.

- D_t = ||x_t - x*||^2
- a_t = <x_t - x*, v_t>,   s_t = ||v_t||^2
- a_u_t = <x_t - x*, u_t> = eta_t a_t,   s_u_t = ||u_t||^2 = eta_t^2 s_t
- b_t = l_t(x_t) - l_t(x*)
- c_t = a_t / sqrt(D_t s_t)
- identity: D_t - D_{t+1} = 2 eta_t a_t - eta_t^2 s_t

All functions compute in float64 and accept numpy arrays, memmaps or torch
tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trajreg.principle._validate import (
    as_1d,
    as_2d,
    as_delta,
    as_float,
    as_lrs,
    check_nonnegative,
    check_same_length,
    to_numpy,
)

__all__ = [
    "TrajectoryQuantities",
    "cosine",
    "default_delta",
    "identity_residual",
    "loss_gap",
    "ratio",
    "step_quantities",
    "trajectory_quantities",
]


@dataclass(frozen=True, eq=False)
class TrajectoryQuantities:
    """Per-step quantities of a block of iterates x_t, ..., x_{t+n}.

    Attributes:
        D: shape (n+1,), D_i = ||x_{t+i} - x*||^2 for every row of the block.
        a: shape (n,), a_i = <x_{t+i} - x*, v_{t+i}>.
        s: shape (n,), s_i = ||v_{t+i}||^2.
        a_u: shape (n,), a_u_i = <x_{t+i} - x*, u_{t+i}> (raw update, no learning rate).
        s_u: shape (n,), s_u_i = ||u_{t+i}||^2.
    """

    D: np.ndarray
    a: np.ndarray
    s: np.ndarray
    a_u: np.ndarray
    s_u: np.ndarray


def _trajectory_quantities_validate(
    xs: Any, lrs: Any, x_star: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs_arr = as_2d(xs, "xs")  # float64 before any subtraction
    if xs_arr.shape[0] < 1:
        raise ValueError("xs must have at least one row")
    x_star_arr = as_1d(x_star, "x_star")
    if x_star_arr.shape[0] != xs_arr.shape[1]:
        raise ValueError(f"x_star has length {x_star_arr.shape[0]} but the rows of xs have "
                         f"length {xs_arr.shape[1]}")
    lrs_arr = as_lrs(lrs)
    if lrs_arr.shape[0] != xs_arr.shape[0] - 1:
        raise ValueError(f"lrs must have one entry per step: xs has {xs_arr.shape[0]} rows, "
                         f"so lrs needs length {xs_arr.shape[0] - 1}, got {lrs_arr.shape[0]}")
    return xs_arr, lrs_arr, x_star_arr


def _trajectory_quantities_compute(
    xs: np.ndarray, lrs: np.ndarray, x_star: np.ndarray
) -> TrajectoryQuantities:
    # Row-wise pairwise sums (not einsum, whose summation order depends on the block's
    # shape), so a step's numbers do not depend on how the trajectory was blocked:
    # store (blocks) and replay (one step at a time) agree bit for bit.
    diff = xs - x_star
    D = np.sum(diff * diff, axis=1)
    u = xs[:-1] - xs[1:]
    a_u = np.sum(diff[:-1] * u, axis=1)
    s_u = np.sum(u * u, axis=1)
    return TrajectoryQuantities(D=D, a=a_u / lrs, s=s_u / lrs**2, a_u=a_u, s_u=s_u)


def trajectory_quantities(xs: Any, lrs: Any, x_star: Any) -> TrajectoryQuantities:
    """Per-step quantities D, a, s, a_u, s_u for a block of consecutive iterates.

    With u_t = x_t - x_{t+1} and v_t = u_t / eta_t::

        D_t = ||x_t - x*||^2          (every row, length n+1)
        a_t = <x_t - x*, v_t>         s_t = ||v_t||^2
        a_u_t = <x_t - x*, u_t>       s_u_t = ||u_t||^2

    Rows are converted to float64 before subtracting. Any block of consecutive
    rows works, so a long trajectory can be streamed in blocks that overlap by
    one row (block k's last row is block k+1's first); concatenating D with the
    overlap row dropped, and a, s, a_u, s_u as they are, gives the one-block
    result.

    Args:
        xs: shape (n+1, d), iterates x_t, ..., x_{t+n}.
        lrs: shape (n,), learning rates eta_t, ..., eta_{t+n-1}; finite and > 0.
        x_star: shape (d,), the reference point.

    Raises:
        ValueError: on shape mismatch, or a learning rate <= 0 or not finite.

    >>> q = trajectory_quantities([[3.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [0.5, 0.5], [0.0, 0.0])
    >>> q.D.tolist(), q.a.tolist(), q.s.tolist(), q.a_u.tolist()
    ([9.0, 1.0, 0.0], [12.0, 2.0], [16.0, 4.0], [6.0, 1.0])
    """
    return _trajectory_quantities_compute(*_trajectory_quantities_validate(xs, lrs, x_star))


def step_quantities(x: Any, x_next: Any, x_star: Any, lr: float) -> tuple[float, float, float]:
    """(D_t, a_t, s_t) for one step, for streaming recorders.

    D_t = ||x - x*||^2, a_t = <x - x*, (x - x_next)/lr>, s_t = ||(x - x_next)/lr||^2:
    the same formulas as :func:`trajectory_quantities`.

    >>> step_quantities([3.0, 0.0], [1.0, 0.0], [0.0, 0.0], 0.5)
    (9.0, 12.0, 16.0)
    """
    x_arr = as_1d(x, "x")
    x_next_arr = as_1d(x_next, "x_next")
    x_star_arr = as_1d(x_star, "x_star")
    check_same_length(x=x_arr, x_next=x_next_arr, x_star=x_star_arr)
    lr_f = float(as_lrs([as_float(lr, "lr")], "lr")[0])
    q = _trajectory_quantities_compute(np.stack([x_arr, x_next_arr]), np.array([lr_f]),
                                       x_star_arr)
    return float(q.D[0]), float(q.a[0]), float(q.s[0])


def loss_gap(loss_at_x: Any, loss_at_star: Any) -> np.ndarray:
    """Loss gap b_t = l_t(x_t) - l_t(x*).

    ``loss_at_star`` is one value per step or a scalar (e.g. a full-batch
    F(x*) subtracted from every entry).

    >>> loss_gap([2.0, 1.5], [0.5, 1.0]).tolist()
    [1.5, 0.5]
    """
    lx = as_1d(loss_at_x, "loss_at_x")
    ls = to_numpy(loss_at_star, "loss_at_star")
    if ls.ndim != 0:
        if ls.ndim != 1:
            raise ValueError(f"loss_at_star must be a scalar or 1-D, got shape {ls.shape}")
        check_same_length(loss_at_x=lx, loss_at_star=ls)
    return lx - ls


def cosine(a: Any, D: Any, s: Any) -> np.ndarray:
    """Cosine between update and trajectory direction: c_t = a_t / sqrt(D_t s_t).

    nan where D_t s_t == 0. ``D`` may have length n or n+1 (as returned by
    :func:`trajectory_quantities`); a trailing extra entry D_{t+n} is ignored.

    >>> cosine([12.0, 0.0], [9.0, 1.0, 0.0], [16.0, 0.0]).tolist()
    [1.0, nan]
    """
    a_arr = as_1d(a, "a")
    D_arr = as_1d(D, "D")
    s_arr = as_1d(s, "s")
    if D_arr.shape[0] == a_arr.shape[0] + 1:
        D_arr = D_arr[:-1]
    check_same_length(a=a_arr, D=D_arr, s=s_arr)
    check_nonnegative(D_arr, "D")
    check_nonnegative(s_arr, "s")
    denom = D_arr * s_arr
    with np.errstate(divide="ignore", invalid="ignore"):
        c = a_arr / np.sqrt(denom)
    return np.where(denom == 0, np.nan, c)


def ratio(a: Any, b: Any, s: Any, delta: Any) -> np.ndarray:
    """Breakpoint ratio r_t = (a_t - delta_t s_t) / b_t; nan where b_t == 0.

    For b_t > 0 the principle RP(gamma; delta) holds at step t iff gamma <= r_t,
    for b_t < 0 iff gamma >= r_t. ``delta`` is a scalar or one value per step.

    >>> ratio([3.0, 1.0, 2.0], [1.0, -2.0, 0.0], [2.0, 2.0, 2.0], 0.5).tolist()
    [2.0, -0.0, nan]
    """
    a_arr = as_1d(a, "a")
    b_arr = as_1d(b, "b")
    s_arr = as_1d(s, "s")
    n = check_same_length(a=a_arr, b=b_arr, s=s_arr)
    d_arr = as_delta(delta, n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = (a_arr - d_arr * s_arr) / b_arr
    return np.where(b_arr == 0, np.nan, r)


def default_delta(lrs: Any) -> np.ndarray:
    """Default delta_t = eta_t / 2 (makes RP equivalent to a distance decrease).

    >>> default_delta([0.1, 0.2]).tolist()
    [0.05, 0.1]
    """
    return as_lrs(lrs) / 2.0


def identity_residual(D: Any, a: Any, s: Any, lrs: Any) -> np.ndarray:
    """Residual of the exact identity: (D_t - D_{t+1}) - (2 eta_t a_t - eta_t^2 s_t).

    ``D`` has length n+1, ``a``, ``s``, ``lrs`` length n. Zero up to rounding
    for quantities computed from one trajectory; a correctness check.

    >>> identity_residual([9.0, 1.0, 0.0], [12.0, 2.0], [16.0, 4.0], [0.5, 0.5]).tolist()
    [0.0, 0.0]
    """
    D_arr = as_1d(D, "D")
    a_arr = as_1d(a, "a")
    s_arr = as_1d(s, "s")
    lrs_arr = as_lrs(lrs)
    n = check_same_length(a=a_arr, s=s_arr, lrs=lrs_arr)
    if D_arr.shape[0] != n + 1:
        raise ValueError(f"D must have length n+1 = {n + 1} (one more than a), "
                         f"got {D_arr.shape[0]}")
    return (D_arr[:-1] - D_arr[1:]) - (2.0 * lrs_arr * a_arr - lrs_arr**2 * s_arr)
