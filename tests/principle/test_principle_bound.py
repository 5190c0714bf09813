"""The convergence bound: formula, conventions and the guarantee from RP."""

import math

import numpy as np
import pytest

from trajreg.principle import (
    convergence_bound,
    default_delta,
    gamma_hat,
    rp_holds,
    trajectory_quantities,
)


def test_formula_matches_loops():
    rng = np.random.default_rng(0)
    b, lrs = rng.normal(size=12), rng.uniform(0.01, 1, size=12)
    bc = convergence_bound(b, lrs, 3.0, 0.7)
    assert bc.lhs == pytest.approx(sum(lrs[t] * b[t] for t in range(12)) / sum(lrs), rel=1e-12)
    assert bc.rhs == pytest.approx(3.0 / (2 * 0.7 * sum(lrs)), rel=1e-12)
    assert bc.holds == (bc.lhs <= bc.rhs)
    assert bc.gamma == 0.7
    # constant eta: lhs is the plain mean, rhs = D0 / (2 eta gamma T)
    bc = convergence_bound(b, np.full(12, 0.1), 3.0, 0.7)
    assert bc.lhs == pytest.approx(np.mean(b), rel=1e-12)
    assert bc.rhs == pytest.approx(3.0 / (2 * 0.1 * 0.7 * 12), rel=1e-12)


@pytest.mark.parametrize("gamma", [0.0, -1.0, -math.inf, math.nan])
def test_vacuous_gamma(gamma):
    bc = convergence_bound([5.0, 6.0], [0.1, 0.1], 1.0, gamma)
    assert bc.rhs == math.inf and bc.holds


def test_infinite_gamma():
    assert convergence_bound([1.0], [0.1], 1.0, math.inf).rhs == 0.0
    assert not convergence_bound([1.0], [0.1], 1.0, math.inf).holds
    assert convergence_bound([-1.0, 0.0], [0.1, 0.1], 1.0, math.inf).holds


def test_nan_d0():
    bc = convergence_bound([1.0], [0.1], math.nan, 2.0)
    assert math.isnan(bc.rhs) and not bc.holds
    assert convergence_bound([1.0], [0.1], math.nan, -1.0).rhs == math.inf


def test_errors():
    with pytest.raises(ValueError, match="D0"):
        convergence_bound([1.0], [0.1], -1.0, 1.0)
    with pytest.raises(ValueError, match="lrs"):
        convergence_bound([1.0], [0.0], 1.0, 1.0)
    with pytest.raises(ValueError, match="same length"):
        convergence_bound([1.0, 2.0], [0.1], 1.0, 1.0)
    with pytest.raises(ValueError, match="b"):
        convergence_bound([], [], 1.0, 1.0)


def _noisy_descent(rng, n, d):
    """A trajectory that approaches a point p, with a learning-rate schedule."""
    p = rng.normal(size=d)
    xs = np.empty((n + 1, d))
    xs[0] = p + rng.normal(size=d) * 3
    lrs = rng.uniform(0.05, 0.5) * rng.uniform(0.3, 1.0, size=n)
    h = rng.uniform(0.5, 2.0)
    for t in range(n):
        v = h * (xs[t] - p) + rng.normal(size=d) * rng.uniform(0, 0.5)
        xs[t + 1] = xs[t] - lrs[t] * v
    return xs, lrs, p, h


@pytest.mark.parametrize("seed", range(60))
def test_bound_holds_when_rp_holds_everywhere(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 40)), int(rng.integers(1, 8))
    xs, lrs, p, h = _noisy_descent(rng, n, d)
    x_star = xs[-1] if seed % 2 == 0 else p
    q = trajectory_quantities(xs, lrs, x_star)
    # loss gaps: roughly h/2 * D_t, noisy, occasionally negative
    b = 0.5 * h * q.D[:-1] * rng.uniform(0.2, 1.5, size=n) + rng.normal(size=n) * 0.05
    delta = default_delta(lrs)
    tested = 0
    windows = [(0, n)] + [tuple(sorted(rng.choice(n + 1, size=2, replace=False)))
                          for _ in range(15)]
    for start, stop in windows:
        sl = slice(start, stop)
        g = gamma_hat(q.a[sl], b[sl], q.s[sl], delta[sl], eps=0.0)
        if not (g > 0):
            continue
        assert np.all(rp_holds(q.a[sl], b[sl], q.s[sl], g, delta[sl]))
        bc = convergence_bound(b[sl], lrs[sl], q.D[start], g)
        assert bc.holds, (start, stop, bc)
        tested += 1
    if seed == 0:
        assert tested > 0


def test_bound_is_exercised_often():
    hits = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n, d = int(rng.integers(1, 40)), int(rng.integers(1, 8))
        xs, lrs, p, h = _noisy_descent(rng, n, d)
        q = trajectory_quantities(xs, lrs, xs[-1] if seed % 2 == 0 else p)
        b = 0.5 * h * q.D[:-1] * rng.uniform(0.2, 1.5, size=n) + rng.normal(size=n) * 0.05
        hits += gamma_hat(q.a, b, q.s, default_delta(lrs)) > 0
    assert hits >= 20


@pytest.mark.parametrize("seed", range(50))
def test_tight_one_step_window_ending_at_x_star(seed):
    # One step, x* = x_1: D_0 - D_1 = D_0 = 2 eta a - eta^2 s = 2 eta gamma_hat b exactly,
    # so lhs = b = rhs in exact arithmetic; holds must survive rounding.
    rng = np.random.default_rng(500 + seed)
    d = int(rng.integers(1, 50))
    xs = rng.normal(size=(2, d)) * 10.0 ** rng.integers(-4, 4)
    lrs = np.array([10.0 ** rng.uniform(-4, 0)])
    b = np.array([10.0 ** rng.uniform(-5, 3)])
    q = trajectory_quantities(xs, lrs, xs[-1])
    g = gamma_hat(q.a, b, q.s, default_delta(lrs))
    bc = convergence_bound(b, lrs, q.D[0], g)
    assert bc.lhs == pytest.approx(bc.rhs, rel=1e-9)
    assert bc.holds
