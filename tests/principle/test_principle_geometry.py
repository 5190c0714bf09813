"""Trajectory geometry against explicit loops, and the RSI + EB => RP implication."""

import math

import numpy as np
import pytest

from trajreg.principle import (
    L_hat,
    MLISummary,
    cos_g,
    cos_v,
    cosine,
    eb,
    fraction_positive,
    gamma_hat,
    gradient_quantities,
    implied_gamma,
    lower_quantile,
    mli_alphas,
    mli_summary,
    mu_hat,
    path_ratio,
    rp_holds,
    rsi,
    rsi_eb_ratio,
    upper_quantile,
)


def test_gradient_quantities_brute_force_and_blocking():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(9, 7)).astype(np.float32)
    gs = rng.normal(size=(9, 7)).astype(np.float32)
    x_star = rng.normal(size=7).astype(np.float32)
    q = gradient_quantities(xs, gs, x_star)
    for t in range(9):
        diff = [float(xs[t, i]) - float(x_star[i]) for i in range(7)]
        assert q.D[t] == pytest.approx(sum(d * d for d in diff), rel=1e-14)
        assert q.g_dot[t] == pytest.approx(
            sum(float(gs[t, i]) * diff[i] for i in range(7)), rel=1e-12, abs=1e-14)
        assert q.g_norm2[t] == pytest.approx(sum(float(g) ** 2 for g in gs[t]), rel=1e-14)
    parts = [gradient_quantities(xs[a:b], gs[a:b], x_star) for a, b in [(0, 4), (4, 5), (5, 9)]]
    for name in ["D", "g_dot", "g_norm2"]:
        assert np.array_equal(np.concatenate([getattr(p, name) for p in parts]),
                              getattr(q, name))


def test_per_step_ratios_brute_force_with_zeros():
    g_dot = [3.0, -2.0, 0.0, 5.0, 0.0]
    g_norm2 = [4.0, 1.0, 0.0, 9.0, 2.0]
    D = [9.0, 4.0, 1.0, 0.0, 0.0]
    exp_rsi, exp_eb, exp_cos = [], [], []
    for gd, gn, d in zip(g_dot, g_norm2, D, strict=True):
        exp_rsi.append(gd / d if d else math.nan)
        exp_eb.append(math.sqrt(gn / d) if d else math.nan)
        exp_cos.append(gd / math.sqrt(gn * d) if gn * d else math.nan)
    np.testing.assert_array_equal(rsi(g_dot, D), exp_rsi)
    np.testing.assert_array_equal(eb(g_norm2, D), exp_eb)
    np.testing.assert_array_equal(cos_g(g_dot, D, g_norm2), exp_cos)
    np.testing.assert_array_equal(cos_v(g_dot, D, g_norm2), exp_cos)
    for arr in [rsi(g_dot, D), eb(g_norm2, D), cos_g(g_dot, D, g_norm2)]:
        assert not np.any(np.isinf(arr))
    # D with the trailing entry of trajectory_quantities is accepted
    np.testing.assert_array_equal(rsi(g_dot, D + [7.0]), exp_rsi)
    np.testing.assert_array_equal(cos_v(g_dot, D, g_norm2), cosine(g_dot, D, g_norm2))


def brute_lower_quantile(values, eps):
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    k = math.floor(round(eps * len(vals), 9))
    return max(m for m in vals if sum(v < m for v in vals) <= k)


def brute_upper_quantile(values, eps):
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    k = math.floor(round(eps * len(vals), 9))
    return min(m for m in vals if sum(v > m for v in vals) <= k)


def test_quantiles_brute_force():
    rng = np.random.default_rng(1)
    for n in [1, 2, 7, 20, 41]:
        for _ in range(5):
            x = rng.integers(-5, 6, size=n).astype(float)  # ties on purpose
            x[rng.random(n) < 0.1] = np.nan
            for eps in [0.0, 0.05, 0.1, 0.29, 0.5, 0.9]:
                lo, up = lower_quantile(x, eps), upper_quantile(x, eps)
                blo, bup = brute_lower_quantile(x.tolist(), eps), brute_upper_quantile(
                    x.tolist(), eps)
                assert (lo == blo) or (math.isnan(lo) and math.isnan(blo))
                assert (up == bup) or (math.isnan(up) and math.isnan(bup))
    assert math.isnan(lower_quantile([np.nan], 0.1))
    assert lower_quantile([3.0, -np.inf, 1.0], 0.0) == -np.inf


def test_mu_hat_is_gamma_hat_with_unit_gaps():
    rng = np.random.default_rng(2)
    for n in [1, 10, 99, 200]:
        r = rng.normal(size=n)
        for eps in [0.0, 0.05, 0.2]:
            assert mu_hat(r, eps) == gamma_hat(r, np.ones(n), np.zeros(n), 0.0, eps)
            assert L_hat(r, eps) == -gamma_hat(-r, np.ones(n), np.zeros(n), 0.0, eps)


def test_fraction_positive_and_ratios():
    assert fraction_positive([0.1, -0.2, 0.0, np.nan, 0.3]) == 0.5
    assert math.isnan(fraction_positive([np.nan]))
    assert math.isnan(fraction_positive([]))
    assert rsi_eb_ratio(0.3, 2.0) == pytest.approx(0.075)
    assert math.isnan(rsi_eb_ratio(0.3, 0.0))
    assert math.isnan(rsi_eb_ratio(float("nan"), 1.0))


def test_path_ratio():
    steps = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 1.0]])
    norms = np.linalg.norm(np.diff(steps, axis=0), axis=1)
    dist = np.linalg.norm(steps[-1] - steps[0])
    assert path_ratio(norms, dist) == pytest.approx(3.0 / math.sqrt(5.0))
    assert path_ratio([1.0, 1.0], 2.0) == 1.0  # straight
    assert math.isnan(path_ratio([1.0], 0.0))
    with pytest.raises(ValueError, match="step_norms"):
        path_ratio([-1.0], 1.0)


def brute_max_bump(alpha, loss):
    best, frm, to = 0.0, alpha[0], alpha[0]
    for i in range(len(loss)):
        for j in range(i, len(loss)):
            if loss[j] - loss[i] > best:
                best, frm, to = loss[j] - loss[i], alpha[i], alpha[j]
    return best, frm, to


def test_mli_summary_brute_force():
    rng = np.random.default_rng(3)
    alpha = mli_alphas(21)
    assert alpha[0] == 0.0 and alpha[-1] == 1.0 and alpha.size == 21
    for _ in range(50):
        loss = np.cumsum(rng.normal(-0.1, 0.2, size=21)) + 3.0
        got = mli_summary(alpha, loss)
        bump, frm, to = brute_max_bump(alpha.tolist(), loss.tolist())
        assert got.max_bump == pytest.approx(bump, abs=1e-15)
        assert got.max_bump >= 0
        if bump > 0:
            assert loss[alpha.tolist().index(got.bump_to)] - loss[
                alpha.tolist().index(got.bump_from)] == pytest.approx(bump)
            assert got.bump_from <= got.bump_to
        assert got.monotone == (bump <= got.tol)
        exact = mli_summary(alpha, loss, rtol=0.0)
        assert exact.monotone == bool(np.all(np.diff(loss) <= 0))
    down = np.linspace(2.0, 0.1, 21)
    assert mli_summary(alpha, down) == MLISummary(True, 0.0, 0.0, 0.0, 2e-6)
    wiggle = down.copy()
    wiggle[5] = wiggle[4] + 1e-7  # a rise below the float32-level tolerance
    assert mli_summary(alpha, wiggle).monotone
    assert not mli_summary(alpha, wiggle, rtol=0.0).monotone
    bad = mli_summary(alpha, np.r_[down[:-1], np.nan])
    assert not bad.monotone and math.isnan(bad.max_bump)


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="alpha must be finite and strictly increasing"):
        mli_summary([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="n must"):
        mli_alphas(1)
    with pytest.raises(ValueError, match="grads"):
        gradient_quantities(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="D must be non-negative"):
        rsi([1.0], [-1.0])
    with pytest.raises(ValueError, match="eps"):
        mu_hat([1.0], 1.0)


def test_implied_gamma_cases():
    assert implied_gamma(1.0, 1.0, 2.0, 0.5) == 0.25
    assert implied_gamma(1.0, 1.0, 2.0, [0.1, 0.5]) == 0.25  # the largest delta
    assert math.isnan(implied_gamma(0.4, 1.0, 2.0, 0.5))  # mu < delta L^2
    assert implied_gamma(0.5, 1.0, 2.0, 0.5) == 0.0
    assert implied_gamma(1.0, 1.0, 0.0, 0.5) == math.inf
    assert math.isnan(implied_gamma(float("nan"), 1.0, 1.0, 0.0))


def noisy_quadratic_steps(rng, n=400, d=6, eta=0.05):
    """SGD-like steps near a quadratic minimum: g_t = H e_t + noise, b_t = e^T H e / 2 + noise."""
    h = np.diag(rng.uniform(0.5, 2.0, size=d))
    e = rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=(n, 1))
    g = e @ h + 0.2 * rng.normal(size=(n, d))
    D = np.sum(e * e, axis=1)
    a = np.sum(g * e, axis=1)
    s = np.sum(g * g, axis=1)
    b = 0.5 * np.einsum("ti,ij,tj->t", e, h, e) + 0.05 * rng.normal(size=n)
    return a, s, D, b, np.full(n, eta)


def test_rsi_eb_and_gap_bound_imply_rp():
    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(20):
        a, s, D, b, lrs = noisy_quadratic_steps(rng)
        delta = lrs / 2
        for e1, e2, e3 in [(0.0, 0.0, 0.0), (0.05, 0.05, 0.05), (0.1, 0.0, 0.02)]:
            mu = mu_hat(rsi(a, D), e1)
            ell = L_hat(eb(s, D), e2)
            kk = upper_quantile(b / D, e3)
            gamma = implied_gamma(mu, ell, kk, delta)
            if math.isnan(gamma):
                continue
            checked += 1
            # every step obeying the three conditions obeys RP(gamma)
            ok3 = (a >= mu * D) & (s <= ell**2 * D) & (b <= kk * D)
            assert np.all(rp_holds(a, b, s, gamma, delta)[ok3])
            # so at most e1 + e2 + e3 of the steps violate it
            assert gamma_hat(a, b, s, delta, e1 + e2 + e3) >= gamma
    assert checked >= 20
