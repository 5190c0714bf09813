"""Epochwise (full-batch) variant of the principle (docs/principle.md, "Epochwise variant").

At stored checkpoints x_k with full training loss f(x_k) and full gradient
grad f(x_k): a_k = <x_k - x*, grad f(x_k)>, b_k = f(x_k) - f(x*),
s_k = ||grad f(x_k)||^2, delta = 0 by default. With gamma = 1 this is the
epochwise star-convexity check of Zhou et al. (ICLR 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trajreg.principle._validate import as_1d, as_2d, as_float, check_same_length
from trajreg.principle.estimate import gamma_hat

__all__ = ["EpochwiseQuantities", "epochwise_gamma_hat", "epochwise_quantities"]


@dataclass(frozen=True, eq=False)
class EpochwiseQuantities:
    """Full-batch quantities at K checkpoints, each of shape (K,).

    Attributes:
        a: a_k = <x_k - x*, grad f(x_k)>.
        b: b_k = f(x_k) - f*.
        s: s_k = ||grad f(x_k)||^2.
    """

    a: np.ndarray
    b: np.ndarray
    s: np.ndarray


def epochwise_quantities(
    xs: Any, grads: Any, losses: Any, x_star: Any, f_star: float
) -> EpochwiseQuantities:
    """a_k = <x_k - x*, grad f(x_k)>, b_k = f(x_k) - f*, s_k = ||grad f(x_k)||^2.

    Args:
        xs: shape (K, d), checkpoints x_k.
        grads: shape (K, d), full-batch gradients at x_k.
        losses: shape (K,), full-batch losses f(x_k).
        x_star: shape (d,), the reference point.
        f_star: f(x*).

    >>> q = epochwise_quantities([[2.0, 0.0]], [[2.0, 0.0]], [2.0], [0.0, 0.0], 0.0)
    >>> q.a.tolist(), q.b.tolist(), q.s.tolist()
    ([4.0], [2.0], [4.0])
    """
    xs_arr = as_2d(xs, "xs")
    g_arr = as_2d(grads, "grads")
    if g_arr.shape != xs_arr.shape:
        raise ValueError(f"grads must have the shape of xs {xs_arr.shape}, got {g_arr.shape}")
    loss_arr = as_1d(losses, "losses")
    check_same_length(xs=xs_arr, losses=loss_arr)
    x_star_arr = as_1d(x_star, "x_star")
    if x_star_arr.shape[0] != xs_arr.shape[1]:
        raise ValueError(f"x_star has length {x_star_arr.shape[0]} but the rows of xs have "
                         f"length {xs_arr.shape[1]}")
    fs = as_float(f_star, "f_star")
    diff = xs_arr - x_star_arr
    a = np.einsum("ij,ij->i", diff, g_arr)
    s = np.einsum("ij,ij->i", g_arr, g_arr)
    return EpochwiseQuantities(a=a, b=loss_arr - fs, s=s)


def epochwise_gamma_hat(
    xs: Any,
    grads: Any,
    losses: Any,
    x_star: Any,
    f_star: float,
    delta: Any = 0.0,
    eps: float = 0.0,
) -> float:
    """gamma_hat_eps of the epochwise quantities (see :func:`gamma_hat`).

    The largest gamma with a_k >= gamma b_k + delta s_k at all but floor(eps K)
    checkpoints. For f(x) = ||x||^2 / 2 and x* = 0 it is 2 (with delta = 0).

    >>> epochwise_gamma_hat([[2.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [1.0, 1.0]],
    ...                     [2.0, 1.0], [0.0, 0.0], 0.0)
    2.0
    """
    q = epochwise_quantities(xs, grads, losses, x_star, f_star)
    return gamma_hat(q.a, q.b, q.s, delta, eps)
