"""Study statistics against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trajreg.study.stats import paired, rankdata, spearman, spearman_bootstrap


def brute_ranks(x):
    return np.array([np.sum(x < v) + (np.sum(x == v) + 1) / 2 for v in x])


def brute_spearman(x, y):
    rx, ry = brute_ranks(x), brute_ranks(y)
    return np.corrcoef(rx, ry)[0, 1]


@pytest.mark.parametrize("seed", range(20))
def test_spearman_matches_pearson_of_ranks(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 30))
    x = rng.integers(0, 5, n).astype(float)  # many ties
    y = x + rng.normal(size=n)
    assert np.allclose(rankdata(x), brute_ranks(x))
    expect = brute_spearman(x, y) if np.std(x) > 0 else np.nan
    assert np.allclose(spearman(x, y), expect, equal_nan=True)


def test_spearman_with_infinities_and_few_points():
    x = np.array([-np.inf, 0.0, 1.0, np.inf])
    assert spearman(x, np.array([1.0, 2.0, 3.0, 4.0])) == 1.0
    assert np.isnan(spearman(np.array([1.0, 2.0]), np.array([1.0, 2.0])))
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_bootstrap_interval_contains_rho_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    a = spearman_bootstrap(x, y, resamples=500, seed=3)
    b = spearman_bootstrap(x, y, resamples=500, seed=3)
    assert a == b
    assert a.low <= a.rho <= a.high and a.n == 40
    # brute force: the same resamples by hand
    r = np.random.default_rng(3)
    draws = [spearman(x[i], y[i]) for i in (r.integers(0, 40, 40) for _ in range(500))]
    assert np.allclose([a.low, a.high], np.quantile(draws, [0.025, 0.975]))


def test_bootstrap_drops_nan_pairs():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    y = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    assert spearman_bootstrap(x, y, resamples=50).n == 3


def test_paired_counts_and_medians_by_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 8))
        a, b = rng.normal(size=n), rng.normal(size=n)
        a[rng.random(n) < 0.2] = np.inf
        p = paired(a, b)
        assert p.n == n
        assert p.larger == sum(int(u > v) for u, v in zip(a, b, strict=True))
        assert p.median_with == np.median(a) and p.median_without == np.median(b)


def test_paired_drops_nan_pairs_and_handles_empty():
    p = paired(np.array([1.0, np.nan]), np.array([0.0, 1.0]))
    assert (p.n, p.larger) == (1, 1)
    assert paired(np.array([]), np.array([])).n == 0
    with pytest.raises(ValueError):
        paired(np.array([1.0]), np.array([1.0, 2.0]))


def test_rankdata_is_a_permutation_without_ties():
    for perm in itertools.permutations([3.0, 1.0, 2.0, 5.0]):
        r = rankdata(np.array(perm))
        assert sorted(r) == [1, 2, 3, 4]
