"""Lanczos, the critical step and the edge-of-stability thresholds against exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajreg.principle.curvature import (
    adam_threshold,
    critical_step,
    eos_threshold,
    fraction_above,
    lanczos,
    tridiagonal_top,
)


def _np_lanczos(A: np.ndarray, iterations: int, tol: float = 1e-10, seed: int = 0):
    start = np.random.default_rng(seed).standard_normal(len(A))
    return lanczos(lambda w: A @ w, start, dot=lambda x, y: float(x @ y),
                   axpby=lambda a, x, b, y: a * x + b * y, iterations=iterations, tol=tol)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(0, 2**31 - 1))
def test_lanczos_finds_the_top_eigenvalue_of_random_symmetric_matrices(n: int, seed: int):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A = (M + M.T) / 2
    exact = np.linalg.eigvalsh(A)[-1]
    r = _np_lanczos(A, iterations=n, tol=0.0, seed=seed)
    # n steps span the whole space (in exact arithmetic): the top eigenvalue to rounding
    assert r.value == pytest.approx(exact, rel=1e-6, abs=1e-8 * np.abs(A).max())


def test_lanczos_reports_convergence_and_stops_early():
    A = np.diag(np.r_[100.0, np.linspace(0.0, 1.0, 199)])  # a well separated top
    r = _np_lanczos(A, iterations=50, tol=1e-8)
    assert r.converged and r.iterations < 50 and r.value == pytest.approx(100.0, rel=1e-8)
    slow = np.diag(np.linspace(0.0, 1.0, 500))  # clustered: not converged in 3 steps
    r = _np_lanczos(slow, iterations=3, tol=1e-12)
    assert not r.converged and r.iterations == 3 and r.value < 1.0


def test_lanczos_on_an_invariant_subspace_is_exact():
    A = np.diag([5.0, 2.0, 2.0, 2.0])
    start = np.array([1.0, 1.0, 0.0, 0.0])  # spans two eigenvectors
    r = lanczos(lambda w: A @ w, start, dot=lambda x, y: float(x @ y),
                axpby=lambda a, x, b, y: a * x + b * y, iterations=10)
    assert r.converged and r.iterations == 2 and r.value == pytest.approx(5.0, rel=1e-14)


def test_tridiagonal_top_against_dense():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(8), rng.standard_normal(7)
    T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    assert tridiagonal_top(a, b) == pytest.approx(np.linalg.eigvalsh(T)[-1], rel=1e-12)
    with pytest.raises(ValueError):
        tridiagonal_top([1.0, 2.0], [1.0, 2.0])


@pytest.mark.parametrize("curvature", [0.5, 3.0, 40.0])
def test_critical_step_of_a_quadratic_is_two_over_the_curvature(curvature: float):
    """l(x - alpha g) = l - alpha |g|^2 + alpha^2 c |g|^2 / 2 rises first at alpha = 2 / c."""
    g2 = 1.7
    step = critical_step(lambda a: 1.0 - a * g2 + a * a * curvature * g2 / 2, 1.0, 0.01)
    assert step.found
    # 6 geometric bisections of a factor-2 bracket: within 2^(1/64)
    assert step.sharpness == pytest.approx(curvature, rel=0.012)
    assert step.evaluations <= 20 + 6


def test_critical_step_when_nothing_rises_and_when_everything_does():
    flat = critical_step(lambda a: -a, 0.0, 1.0, max_steps=5)
    assert not flat.found and math.isnan(flat.sharpness) and flat.alpha == 32.0
    steep = critical_step(lambda a: 1.0 + a, 1.0, 1.0, max_steps=5)
    assert steep.found and steep.alpha == 1.0 / 32 and steep.evaluations == 6
    broken = critical_step(lambda a: math.nan if a > 0.5 else -a, 0.0, 0.1)
    assert broken.found and 0.5 < broken.alpha <= 0.5 * 2 ** (1 / 32)


def test_thresholds():
    assert eos_threshold([0.1]).tolist() == [20.0]
    assert eos_threshold([0.1], momentum=0.9).tolist() == pytest.approx([38.0])
    assert adam_threshold([0.01], beta1=0.9).tolist() == pytest.approx([3800.0])
    assert math.isnan(fraction_above([math.nan], [1.0]))
