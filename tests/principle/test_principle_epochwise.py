"""Epochwise quantities, and a convex problem with a closed-form gamma.

Full-batch gradient descent on f(x) = ||x||^2 / 2 with constant step eta in (0, 1):
x_{t+1} = (1 - eta) x_t, so u_t = eta x_t and v_t = x_t = grad f(x_t). With the exact
minimiser x* = 0 as the reference and l_t = f (full batch):

    a_t = <x_t - 0, x_t> = ||x_t||^2,   s_t = ||x_t||^2,   b_t = ||x_t||^2 / 2,
    r_t = (a_t - (eta/2) s_t) / b_t = (1 - eta/2) ||x_t||^2 / (||x_t||^2 / 2) = 2 - eta

for every t, so gamma_hat = 2 - eta exactly, gamma_bar = 2 - eta and
kappa_hat = eta (2 - eta). Epochwise (delta = 0): a_k / b_k = 2, so every checkpoint is
star-convex (a_k >= b_k) and the epochwise gamma_hat is 2.
"""

import numpy as np
import pytest

from trajreg.principle import (
    convergence_bound,
    default_delta,
    epochwise_gamma_hat,
    epochwise_quantities,
    gamma_bar,
    gamma_hat,
    identity_residual,
    kappa_hat,
    loss_gap,
    star_convex_fraction,
    star_convexity,
    trajectory_quantities,
)


def _gd_on_quadratic(eta, n, d, seed):
    rng = np.random.default_rng(seed)
    xs = np.empty((n + 1, d))
    xs[0] = rng.normal(size=d) * 5
    for t in range(n):
        xs[t + 1] = xs[t] - eta * xs[t]  # grad f(x) = x
    return xs


@pytest.mark.parametrize("eta", [0.01, 0.1, 0.5, 0.9])
def test_gradient_descent_on_quadratic_has_gamma_two_minus_eta(eta):
    n, d = 40, 6
    xs = _gd_on_quadratic(eta, n, d, seed=int(eta * 100))
    lrs = np.full(n, eta)
    x_star = np.zeros(d)
    q = trajectory_quantities(xs, lrs, x_star)
    f = 0.5 * np.sum(xs**2, axis=1)
    b = loss_gap(f[:-1], 0.0)
    delta = default_delta(lrs)
    assert np.max(np.abs(identity_residual(q.D, q.a, q.s, lrs))) <= 1e-10 * q.D[0]
    assert gamma_hat(q.a, b, q.s, delta) == pytest.approx(2 - eta, rel=1e-12)
    assert gamma_hat(q.a, b, q.s, delta, eps=0.05) == pytest.approx(2 - eta, rel=1e-12)
    assert gamma_bar(q.a, b, q.s, delta) == pytest.approx(2 - eta, rel=1e-12)
    assert kappa_hat(q.a, b, q.s, lrs) == pytest.approx(eta * (2 - eta), rel=1e-12)
    assert convergence_bound(b, lrs, q.D[0], 2 - eta).holds
    # epochwise, at every iterate
    ew = epochwise_quantities(xs, xs, f, x_star, 0.0)
    np.testing.assert_allclose(ew.a, 2 * ew.b, rtol=1e-12)
    assert star_convexity(ew.a, ew.b).all() and star_convex_fraction(ew.a, ew.b) == 1.0
    assert epochwise_gamma_hat(xs, xs, f, x_star, 0.0) == pytest.approx(2.0, rel=1e-12)


def test_epochwise_quantities_match_loops():
    rng = np.random.default_rng(1)
    K, d = 7, 4
    xs, grads = rng.normal(size=(K, d)), rng.normal(size=(K, d))
    losses, x_star, f_star = rng.uniform(1, 2, size=K), rng.normal(size=d), 0.5
    q = epochwise_quantities(xs, grads, losses, x_star, f_star)
    for k in range(K):
        assert q.a[k] == pytest.approx(sum((xs[k][j] - x_star[j]) * grads[k][j]
                                           for j in range(d)), rel=1e-12)
        assert q.b[k] == losses[k] - f_star
        assert q.s[k] == pytest.approx(sum(g * g for g in grads[k]), rel=1e-12)
    for delta, eps in ((0.0, 0.0), (0.1, 0.0), (0.0, 0.3)):
        assert epochwise_gamma_hat(xs, grads, losses, x_star, f_star, delta, eps) == gamma_hat(
            q.a, q.b, q.s, delta, eps)


def test_epochwise_errors():
    xs = np.zeros((3, 2))
    with pytest.raises(ValueError, match="grads"):
        epochwise_quantities(xs, np.zeros((3, 3)), np.zeros(3), np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="losses"):
        epochwise_quantities(xs, xs, np.zeros(2), np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="x_star"):
        epochwise_quantities(xs, xs, np.zeros(3), np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="f_star"):
        epochwise_quantities(xs, xs, np.zeros(3), np.zeros(2), [0.0, 1.0])
