"""The statistics of a study's report: pure functions over arrays, no I/O.

scipy.stats does the work wherever it does the same thing: the exact sign test
(``binomtest``), bootstrap intervals (``bootstrap``, percentile method, a fixed seed so
that reports are byte-identical on rerun), Spearman's rho (``spearmanr``; the
bootstrap resamples use ``rankdata``). Written here: the paired differences (equal
infinities differ by 0), the Holm correction (not in scipy.stats), and the
bootstrap of Spearman's rho, which skips the resamples where rho is undefined (a
constant resample), something ``scipy.stats.bootstrap`` cannot do.

Why the sign test: a comparison reports the *median* paired difference, and the
sign test is the exact test of "the median difference is 0"; it needs no symmetry
of the differences (the Wilcoxon signed-rank test does) and is valid for the
+-inf values gamma_hat takes when no (every) gamma qualifies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


def differences(with_: Sequence[float] | np.ndarray,
                without: Sequence[float] | np.ndarray) -> np.ndarray:
    """Paired differences with - without; equal values (the same infinity included)
    differ by 0; nan where either side is nan.

    >>> differences([2.0, np.inf, np.inf, 1.0], [1.0, np.inf, 3.0, np.nan]).tolist()
    [1.0, 0.0, inf, nan]
    """
    a, b = np.asarray(with_, float), np.asarray(without, float)
    if a.shape != b.shape:
        raise ValueError(f"unmatched pairs: {a.shape} vs {b.shape}")
    with np.errstate(invalid="ignore"):
        d = a - b
    return np.where(a == b, 0.0, d)


def sign_test(d: np.ndarray) -> float:
    """Exact two-sided sign test of median(d) = 0 (zeros dropped; 1.0 when all are 0).

    >>> sign_test(np.array([1.0, 2.0, 3.0])), sign_test(np.ones(8))
    (0.25, 0.0078125)
    """
    d = np.asarray(d, float)
    d = d[~np.isnan(d)]
    pos, neg = int(np.sum(d > 0)), int(np.sum(d < 0))
    if pos + neg == 0:
        return 1.0
    return float(sps.binomtest(pos, pos + neg, 0.5, alternative="two-sided").pvalue)


def smallest_p(n: int) -> float:
    """The smallest two-sided sign-test p that n pairs can give: 2 * 0.5**n (<= 1).

    >>> smallest_p(3), smallest_p(6), smallest_p(10)
    (0.25, 0.03125, 0.001953125)
    """
    return min(1.0, 2.0 * 0.5 ** n) if n > 0 else 1.0


def median_interval(d: np.ndarray, *, level: float = LEVEL, resamples: int = RESAMPLES,
                    seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``d`` (nan values dropped; nan
    with fewer than 2 values). Infinite differences take part as values beyond every
    finite one (an endpoint beyond them is +-inf).

    >>> median_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    (1.5, 5.5)
    """
    d = np.asarray(d, float)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return math.nan, math.nan
    finite = d[np.isfinite(d)]
    far = 10.0 * (float(np.max(np.abs(finite))) if len(finite) else 1.0) + 1.0
    x = np.clip(d, -far, far)  # +-inf as +-far: the median's order statistics are kept
    res = sps.bootstrap((x,), np.median, n_resamples=resamples, confidence_level=level,
                        method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    edge = far / 2  # beyond every finite |d|: an endpoint made of infinite differences
    return (-math.inf if low <= -edge else math.inf if low >= edge else low,
            -math.inf if high <= -edge else math.inf if high >= edge else high)


@dataclass(frozen=True)
class PairedTest:
    """The paired differences of one comparison, summarised."""

    n: int  # pairs with a defined difference
    median: float  # median difference (nan when n = 0)
    low: float  # bootstrap interval of the median
    high: float
    p_value: float  # exact two-sided sign test
    larger: int  # pairs with difference > 0
    smaller: int  # pairs with difference < 0


def paired_test(with_: Sequence[float] | np.ndarray, without: Sequence[float] | np.ndarray,
                *, level: float = LEVEL, resamples: int = RESAMPLES,
                seed: int = SEED) -> PairedTest:
    """Median paired difference, its bootstrap interval and the sign test's p.

    >>> t = paired_test([2.0, 3.0, 4.0], [1.0, 1.0, 1.0], resamples=200)
    >>> t.n, t.median, t.p_value, t.larger
    (3, 2.0, 0.25, 3)
    """
    d = differences(with_, without)
    d = d[~np.isnan(d)]
    if not len(d):
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, 0, 0)
    low, high = median_interval(d, level=level, resamples=resamples, seed=seed)
    return PairedTest(len(d), float(np.median(d)), low, high, sign_test(d),
                      int(np.sum(d > 0)), int(np.sum(d < 0)))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (step-down; nan values are not tested and stay nan):
    p_(k) adjusted = max over j <= k of min(1, (m - j + 1) p_(j)), m = tested ones.
    Rejecting where adjusted p < alpha is Holm's procedure at level alpha.

    >>> holm([0.01, 0.04, np.nan, 0.03]).tolist()
    [0.03, 0.06, nan, 0.06]
    """
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = round(running, 15)
    return out


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho with a bootstrap interval; nan where there are too few runs."""

    rho: float
    low: float
    high: float
    n: int


def _rho_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Spearman's rho of each row pair: Pearson's correlation of average ranks
    rx, ry = sps.rankdata(x, axis=1), sps.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt(np.sum(rx * rx, axis=1) * np.sum(ry * ry, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.sum(rx * ry, axis=1) / den, np.nan)


def spearman_ci(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                min_n: int = 4, level: float = LEVEL, resamples: int = RESAMPLES,
                seed: int = SEED) -> Correlation:
    """Spearman's rho of the pairs (x_i, y_i) (pairs with a nan dropped; +-inf rank
    like any number) and a percentile bootstrap interval over resampled pairs,
    skipping resamples where rho is undefined. No rho with fewer than ``min_n`` pairs.

    >>> c = spearman_ci(np.arange(20.0), np.arange(20.0) ** 2, resamples=200)
    >>> c.rho, c.low, c.high, c.n
    (1.0, 1.0, 1.0, 20)
    >>> spearman_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).rho
    nan
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = len(x)
    nan = math.nan
    if n < max(min_n, 3) or np.all(x == x[0]) or np.all(y == y[0]):
        return Correlation(nan, nan, nan, n)
    rho = float(sps.spearmanr(x, y).statistic)
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    draws = _rho_rows(x[idx], y[idx])
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return Correlation(rho, nan, nan, n)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Correlation(rho, float(low), float(high), n)


def pooled_rho(rhos: Sequence[float], ns: Sequence[int], *, level: float = LEVEL,
               resamples: int = RESAMPLES, seed: int = SEED) -> Correlation:
    """The n-weighted mean of within-stratum rhos, with a percentile bootstrap over
    strata (resampling whole strata); no interval with fewer than 2 strata.
    ``n`` of the result is the number of runs in the strata pooled.

    >>> c = pooled_rho([0.5, 1.0], [4, 12], resamples=200)
    >>> c.rho, c.n
    (0.875, 16)
    """
    r, w = np.asarray(rhos, float), np.asarray(ns, float)
    keep = ~np.isnan(r)
    r, w = r[keep], w[keep]
    if not len(r):
        return Correlation(math.nan, math.nan, math.nan, 0)
    rho = float(np.sum(r * w) / np.sum(w))
    if len(r) < 2:
        return Correlation(rho, math.nan, math.nan, int(w.sum()))

    def weighted(rr: np.ndarray, ww: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(rr * ww, axis=axis) / np.sum(ww, axis=axis)

    res = sps.bootstrap((r, w), weighted, paired=True, vectorized=True, method="percentile",
                        n_resamples=resamples, confidence_level=level,
                        rng=np.random.default_rng(seed))
    return Correlation(rho, float(res.confidence_interval.low),
                       float(res.confidence_interval.high), int(w.sum()))
