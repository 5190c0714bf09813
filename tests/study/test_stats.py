"""Study statistics against brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from trajreg.study.stats import (
    differences,
    holm,
    median_interval,
    paired_test,
    pooled_rho,
    sign_test,
    smallest_p,
    spearman_ci,
)


def brute_sign_p(pos: int, neg: int) -> float:
    n = pos + neg
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def brute_ranks(x):
    return np.array([np.sum(x < v) + (np.sum(x == v) + 1) / 2 for v in x])


@pytest.mark.parametrize("seed", range(20))
def test_sign_test_matches_the_binomial_by_hand(seed):
    rng = np.random.default_rng(seed)
    d = rng.integers(-3, 4, int(rng.integers(1, 15))).astype(float)
    pos, neg = int(np.sum(d > 0)), int(np.sum(d < 0))
    expect = brute_sign_p(pos, neg) if pos + neg else 1.0
    assert np.isclose(sign_test(d), expect)


def test_three_seeds_can_never_be_significant():
    assert sign_test(np.array([1.0, 2.0, 3.0])) == 0.25 == smallest_p(3)
    assert smallest_p(8) == 2 / 256


def test_differences_of_infinities():
    d = differences([np.inf, -np.inf, np.inf, 2.0], [np.inf, -np.inf, 1.0, -np.inf])
    assert d.tolist() == [0.0, 0.0, np.inf, np.inf]


@pytest.mark.parametrize("seed", range(10))
def test_holm_decisions_match_the_step_down_procedure(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.1, int(rng.integers(1, 9)))
    alpha = 0.05
    order = np.argsort(p)
    reject = np.zeros(len(p), bool)
    for k, i in enumerate(order):  # brute force: stop at the first failure
        if p[i] < alpha / (len(p) - k):
            reject[i] = True
        else:
            break
    assert ((holm(p) < alpha) == reject).all()


def test_median_interval_is_seeded_and_handles_infinities():
    d = np.array([0.5, 1.0, 2.0, 3.0, np.inf, np.inf])
    a = median_interval(d, resamples=300, seed=1)
    assert a == median_interval(d, resamples=300, seed=1)
    assert 0 < a[0] <= 2.5 and a[1] == math.inf
    assert all(math.isnan(v) for v in median_interval(np.array([1.0])))


def test_paired_test_counts_and_median():
    t = paired_test([3.0, 2.0, 5.0, np.nan], [1.0, 2.5, 1.0, 0.0], resamples=200)
    assert (t.n, t.larger, t.smaller) == (3, 2, 1)
    assert t.median == 2.0 and np.isclose(t.p_value, brute_sign_p(2, 1))
    empty = paired_test([], [])
    assert empty.n == 0 and math.isnan(empty.median)


@pytest.mark.parametrize("seed", range(10))
def test_spearman_is_pearson_of_ranks(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 30))
    x = rng.integers(0, 5, n).astype(float)  # ties
    y = x + rng.normal(size=n)
    c = spearman_ci(x, y, resamples=100)
    if np.std(x) == 0:
        assert math.isnan(c.rho)
    else:
        assert np.isclose(c.rho, np.corrcoef(brute_ranks(x), brute_ranks(y))[0, 1])
        assert c.low <= c.rho <= c.high or math.isnan(c.low)


def test_spearman_bootstrap_by_hand_and_small_strata():
    rng = np.random.default_rng(0)
    x = rng.normal(size=25)
    y = x + rng.normal(size=25)
    c = spearman_ci(x, y, resamples=300, seed=3)
    assert c == spearman_ci(x, y, resamples=300, seed=3)
    idx = np.random.default_rng(3).integers(0, 25, (300, 25))
    draws = []
    for i in idx:
        if np.std(x[i]) and np.std(y[i]):
            draws.append(np.corrcoef(brute_ranks(x[i]), brute_ranks(y[i]))[0, 1])
    assert np.allclose([c.low, c.high], np.quantile(draws, [0.025, 0.975]))
    assert math.isnan(spearman_ci(x[:3], y[:3]).rho)  # n < 4: no rho
    assert spearman_ci([1.0, np.nan, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, np.nan]).n == 3


def test_pooled_rho_is_the_weighted_mean_with_a_bootstrap_over_strata():
    c = pooled_rho([0.2, 0.8, np.nan], [10, 30, 5], resamples=500)
    assert np.isclose(c.rho, (0.2 * 10 + 0.8 * 30) / 40) and c.n == 40
    assert 0.2 <= c.low <= c.rho <= c.high <= 0.8
    # every resample is a weighted mean of the strata drawn: within their range
    for rhos in itertools.permutations([0.1, 0.5, 0.9]):
        p = pooled_rho(list(rhos), [4, 4, 4], resamples=200)
        assert np.isclose(p.rho, 0.5) and 0.1 <= p.low <= p.high <= 0.9
    single = pooled_rho([0.3], [6])
    assert single.rho == 0.3 and math.isnan(single.low)
