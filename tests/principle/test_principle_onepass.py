"""The interval statistics of a run measured on a random sample of steps
(trajreg.principle.onepass): brute force, and the summary's keys from arrays."""

import math
import warnings

import numpy as np
import pytest

from trajreg.principle import (
    gamma_bar_interval,
    gamma_hat,
    gamma_hat_interval,
    kappa_hat_interval,
    onepass_summary,
    sketch_check,
)


def test_sketch_check_compares_gamma_hat_on_the_same_steps():
    rng = np.random.default_rng(1)
    n = 100
    a = 1.0 + rng.random(n)  # b = 1, s = 0: r_t = a_t
    b, s, delta = np.ones(n), np.zeros(n), np.zeros(n)
    same = sketch_check(a, a, b, s, delta, (0.0, 0.05))
    assert same == {"n_window": n, "gamma_rel": {"0.05": 0.0},
                    "a_rel_at_quantile": {"0.05": 0.0}}  # eps 0 is left out
    low = a * 0.8  # a sketch 20% low everywhere
    got = sketch_check(low, a, b, s, delta, (0.05,))
    assert got["gamma_rel"]["0.05"] == pytest.approx(0.2)
    assert got["a_rel_at_quantile"]["0.05"] == pytest.approx(0.2)
    assert sketch_check(low, a, b, s, 0.0, (0.05,)) == got  # a scalar delta is broadcast


def test_sketch_check_of_no_steps():
    empty = np.zeros(0)
    assert sketch_check(empty, empty, empty, empty, empty, (0.0, 0.05)) == {
        "n_window": 0, "gamma_rel": {"0.05": None}, "a_rel_at_quantile": {"0.05": None}}
    with pytest.raises(ValueError, match="a_exact"):
        sketch_check(np.ones(3), np.ones(2), np.ones(3), np.zeros(3), 0.0, (0.05,))


def _brute_gamma(a, b, s, delta, eps):
    """gamma_hat(eps) by its definition (the largest breakpoint r_t, b_t > 0, with at
    most floor(eps n) violations a_t < gamma b_t + delta_t s_t) and the steps at it."""
    n = len(a)
    allowed = int(np.floor(round(eps * n, 9)))
    best, at = -np.inf, []
    for i in range(n):
        if b[i] <= 0:
            continue
        g = (a[i] - delta[i] * s[i]) / b[i]
        # a violation by more than rounding (step i itself sits on its breakpoint)
        if sum(a[j] - delta[j] * s[j] < g * b[j] - 1e-12 for j in range(n)) <= allowed:
            if g > best:
                best, at = g, [i]
            elif g == best:
                at.append(i)
    return best, at


def test_sketch_check_brute_force():
    """gamma_rel and a_rel_at_quantile against a brute force on random windows with
    b_t of both signs, s_t > 0 and a sketch error that differs step by step."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 40))
        a = rng.normal(1.0, 0.5, n)
        b = rng.normal(0.8, 0.6, n)
        s, delta = rng.random(n), np.full(n, 0.05)
        a_sk = a * (1 + rng.normal(0, 0.2, n))
        eps = (0.0, 0.05, 0.1, 0.25)
        got = sketch_check(a_sk, a, b, s, delta, eps)
        assert got["n_window"] == n and set(got["gamma_rel"]) == {"0.05", "0.1", "0.25"}
        for e in eps[1:]:
            g_ex, at_ex = _brute_gamma(a, b, s, delta, e)
            g_sk, at_sk = _brute_gamma(a_sk, b, s, delta, e)
            assert g_ex == pytest.approx(gamma_hat(a, b, s, delta, e))
            rel = got["gamma_rel"][str(e)]
            if np.isfinite(g_ex) and g_ex != 0:
                assert rel == pytest.approx(abs(g_sk - g_ex) / abs(g_ex))
            else:
                assert rel is None
            deciding = {i for i in at_ex[:1] + at_sk[:1]
                        if np.isfinite(a[i]) and a[i] != 0}
            want = max((abs(a_sk[i] - a[i]) / abs(a[i]) for i in deciding), default=None)
            assert got["a_rel_at_quantile"][str(e)] == (
                None if want is None else pytest.approx(want)), (seed, e)


def _steps(seed, n):
    rng = np.random.default_rng(seed)
    return (np.sort(rng.choice(3 * n, n, replace=False)), rng.normal(1.0, 0.5, n),
            rng.normal(0.8, 0.6, n), rng.random(n), np.full(n, 0.1), rng.random(n) < 0.8)


def test_onepass_summary_of_a_sample_is_the_intervals_on_the_window():
    eps = (0.0, 0.05, 0.1)
    for seed in range(10):
        step, a, b, s, lr, w = _steps(seed, 120)
        delta = lr / 2
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pure: never warns, whatever the sample
            out = onepass_summary(step, a, b, s, lr, delta, w, eps, 0.9)
        assert set(out) == {"n_sampled_window", "gamma_hat_ci", "kappa_hat_ci", "gamma_bar_ci"}
        assert out["n_sampled_window"] == int(w.sum())
        for e in eps:
            g = gamma_hat_interval(a[w], b[w], s[w], delta[w], e, 0.9)
            k = kappa_hat_interval(a[w], b[w], s[w], lr[w], e, 0.9)
            assert out["gamma_hat_ci"][str(e)] == [g.low, g.high]
            assert out["kappa_hat_ci"][str(e)] == [k.low, k.high]
        assert out["gamma_bar_ci"] == list(gamma_bar_interval(a[w], b[w], s[w], delta[w], 0.9))
        # a scalar delta is broadcast
        assert onepass_summary(step, a, b, s, lr, 0.05, w, eps, 0.9) == onepass_summary(
            step, a, b, s, lr, np.full(len(a), 0.05), w, eps, 0.9)


def test_onepass_summary_of_every_step_is_empty():
    _, a, b, s, lr, w = _steps(0, 50)
    assert onepass_summary(np.arange(50), a, b, s, lr, lr / 2, w, (0.05,)) == {}
    empty = np.zeros(0)
    assert onepass_summary(empty, empty, empty, empty, empty, empty, empty, (0.05,)) == {}


def test_onepass_summary_of_a_sketch():
    """Mode sketch: every step estimated, the intervals and sketch_check on the check
    steps (a finite a_exact) of the window, the median errors on every check step."""
    n = 200
    step, a, b, s, lr, w = _steps(3, n)
    rng = np.random.default_rng(4)
    a_sk, D = a * (1 + rng.normal(0, 0.1, n)), rng.random(n) + 1
    a_ex, D_ex = a.copy(), D * (1 + rng.normal(0, 0.05, n))
    off = rng.random(n) > 0.5
    a_ex[off], D_ex[off] = np.nan, np.nan
    delta, eps = lr / 2, (0.0, 0.05)
    out = onepass_summary(np.arange(n), a_sk, b, s, lr, delta, w, eps,
                          a_exact=a_ex, D=D, D_exact=D_ex)
    m = ~off & w
    assert out["n_sampled_window"] == int(m.sum())
    g = gamma_hat_interval(a[m], b[m], s[m], delta[m], 0.05)
    assert out["gamma_hat_ci"]["0.05"] == [g.low, g.high]
    err = out["sketch_error"]
    assert err["n"] == int((~off).sum())
    assert err["a_median_rel"] == pytest.approx(np.median(np.abs(a_sk - a)[~off] / np.abs(a[~off])))
    assert err["D_median_rel"] == pytest.approx(np.median(np.abs(D - D_ex)[~off] / D_ex[~off]))
    assert {k: err[k] for k in ("n_window", "gamma_rel", "a_rel_at_quantile")} == sketch_check(
        a_sk[m], a[m], b[m], s[m], delta[m], eps)
    # no check step at all: nan medians, no interval
    none = np.full(n, np.nan)
    out = onepass_summary(np.arange(n), a_sk, b, s, lr, delta, w, eps,
                          a_exact=none, D=D, D_exact=none)
    assert out["n_sampled_window"] == 0 and out["sketch_error"]["n"] == 0
    assert math.isnan(out["sketch_error"]["a_median_rel"])
    assert out["gamma_hat_ci"]["0.05"] == [None, None]


def test_onepass_summary_refuses_bad_arrays():
    step, a, b, s, lr, w = _steps(0, 20)
    with pytest.raises(ValueError, match="a_exact needs D and D_exact"):
        onepass_summary(step, a, b, s, lr, 0.05, w, (0.05,), a_exact=a)
    with pytest.raises(ValueError, match="window"):
        onepass_summary(step, a, b, s, lr, 0.05, w[:-1], (0.05,))
    with pytest.raises(ValueError, match="delta"):
        onepass_summary(step, a, b, s, lr, np.ones(3), w, (0.05,))
