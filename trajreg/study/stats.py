"""Statistics of a study's comparisons: pure functions over arrays, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (+-inf rank like any number).

    >>> rankdata(np.array([3.0, 1.0, 3.0, np.inf])).tolist()
    [2.5, 1.0, 2.5, 4.0]
    """
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    # average the ranks of tied values
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (average) ranks.

    rho = cov(rank x, rank y) / (sd(rank x) sd(rank y)); nan with fewer than 3
    pairs or a constant variable.

    >>> spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 25, 100]))
    1.0
    >>> spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1]))
    -1.0
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    if len(x) < 3:
        return float("nan")
    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    den = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.sum(rx * ry) / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class Correlation:
    rho: float
    low: float
    high: float
    n: int
    level: float
    resamples: int


def spearman_bootstrap(x: np.ndarray, y: np.ndarray, *, level: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> Correlation:
    """Spearman's rho of the pairs (x_i, y_i) with a percentile bootstrap interval.

    Pairs with a nan are dropped. The interval is the (1-level)/2 and (1+level)/2
    quantiles of rho over ``resamples`` resamplings of the pairs with replacement
    (resamples where rho is undefined, e.g. all ties, are skipped). Deterministic
    given ``seed``.

    >>> c = spearman_bootstrap(np.arange(20.0), np.arange(20.0) ** 2, resamples=200)
    >>> c.rho, c.low, c.high, c.n
    (1.0, 1.0, 1.0, 20)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = len(x)
    rho = spearman(x, y)
    if not np.isfinite(rho):
        return Correlation(rho, float("nan"), float("nan"), n, level, resamples)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        r = spearman(x[i], y[i])
        if np.isfinite(r):
            draws.append(r)
    if not draws:
        return Correlation(rho, float("nan"), float("nan"), n, level, resamples)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Correlation(rho, float(low), float(high), n, level, resamples)


@dataclass(frozen=True)
class Paired:
    """Matched-seed comparison of one metric with and without a technique."""

    median_with: float
    median_without: float
    larger: int  # seeds where with > without
    n: int

    @property
    def mostly_larger(self) -> bool:
        return self.n > 0 and self.larger * 2 > self.n


def paired(with_: np.ndarray, without: np.ndarray) -> Paired:
    """Medians of each side and the number of matched pairs where with > without.

    Medians (not means) so that +-inf estimates (every or no gamma qualifies) and a
    diverged seed do not swamp the others; pairs where either side is nan are
    dropped.

    >>> paired(np.array([2.0, 3.0, np.inf]), np.array([1.0, 4.0, 0.5]))
    Paired(median_with=3.0, median_without=1.0, larger=2, n=3)
    """
    a, b = np.asarray(with_, float), np.asarray(without, float)
    if a.shape != b.shape:
        raise ValueError(f"unmatched pairs: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return Paired(float("nan"), float("nan"), 0, 0)
    return Paired(float(np.median(a)), float(np.median(b)), int(np.sum(a > b)), len(a))
