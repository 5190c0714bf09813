"""Confidence intervals from sampled steps: brute force and simulated coverage."""

import math

import numpy as np
import pytest

from trajreg.principle import (
    Interval,
    gamma_bar,
    gamma_bar_interval,
    gamma_hat,
    gamma_hat_interval,
    kappa_bar_interval,
    kappa_hat,
    kappa_hat_interval,
    mean_interval,
    order_statistic_ranks,
    quantile_interval,
    ratio_interval,
)

INF = math.inf


def binom_pmf(n, q):
    """Exact binomial probabilities with math.comb (no scipy)."""
    if q == 0.0:
        return [1.0] + [0.0] * n
    return [math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(n + 1)]


def brute_ranks(n, q, conf):
    pmf = binom_pmf(n, q)
    half = (1 - conf) / 2
    low = None
    for ell in range(1, n + 1):  # P(B <= ell - 1) <= half, the largest such rank
        if math.fsum(pmf[:ell]) <= half + 1e-12:
            low = ell
        else:
            break
    high = None
    for u in range(n, 0, -1):  # P(B >= u) <= half, the smallest such rank
        if math.fsum(pmf[u:]) <= half + 1e-12:
            high = u
        else:
            break
    lo_i = 0 if low is None else low
    hi_i = n if high is None else high - 1
    return low, high, sum(pmf[lo_i:hi_i + 1])


@pytest.mark.parametrize("q", [0.0, 0.05, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("conf", [0.9, 0.95])
def test_order_statistic_ranks_brute_force(q, conf):
    for n in list(range(0, 80)) + [150, 151]:
        got = order_statistic_ranks(n, q, conf)
        if n == 0:
            assert got == (None, None, 0.0)
            continue
        low, high, cov = brute_ranks(n, q, conf)
        assert (got.low, got.high) == (low, high), (n, q, conf)
        assert got.coverage == pytest.approx(cov, abs=1e-9)
        assert got.coverage >= conf - 1e-12


def test_minimum_sample_size_for_a_lower_bound():
    # two-sided 95% for the 5% quantile: 0.95^n <= 0.025 first at n = 72
    assert 0.95**71 > 0.025 >= 0.95**72
    assert order_statistic_ranks(71, 0.05).low is None
    assert order_statistic_ranks(72, 0.05).low == 1
    assert order_statistic_ranks(1, 0.05).high is None
    assert order_statistic_ranks(2, 0.05).high is not None


def test_quantile_interval_brute_force_and_nan():
    rng = np.random.default_rng(1)
    for n in [5, 40, 72, 100, 333]:
        x = rng.normal(size=n)
        for q in [0.05, 0.5]:
            lo, hi = quantile_interval(x, q)
            ranks = order_statistic_ranks(n, q)
            xs = sorted(x.tolist())
            assert lo == (None if ranks.low is None else xs[ranks.low - 1])
            assert hi == (None if ranks.high is None else xs[ranks.high - 1])
            k = math.floor(q * n)  # the sample quantile of gamma_hat's convention is inside
            assert (lo is None or lo <= xs[k]) and (hi is None or xs[k] <= hi)
    with_nan = np.r_[np.arange(1.0, 101.0), np.nan, np.nan]
    assert quantile_interval(with_nan, 0.05) == quantile_interval(np.arange(1.0, 101.0), 0.05)
    assert quantile_interval([], 0.5) == Interval(None, None)


def test_quantile_interval_coverage_continuous():
    rng = np.random.default_rng(2)
    draws = rng.exponential(size=(2000, 100))
    xi = -math.log(1 - 0.05)  # the exponential's 5% quantile
    hits = 0
    for row in draws:
        lo, hi = quantile_interval(row, 0.05)
        hits += lo <= xi <= hi
    exact = order_statistic_ranks(100, 0.05).coverage
    se = math.sqrt(exact * (1 - exact) / 2000)
    assert abs(hits / 2000 - exact) < 4 * se


# ---- gamma_hat_interval -------------------------------------------------------------


def violations(c, b, gamma):
    """V(gamma) by an explicit loop over steps (docs/principle.md, section 4)."""
    v = 0
    for ct, bt in zip(c, b, strict=True):
        if not (math.isfinite(ct) and math.isfinite(bt)):
            v += 1
        elif bt > 0:
            v += not gamma <= ct / bt
        elif bt < 0:
            v += not gamma >= ct / bt
        else:
            v += not ct >= 0
    return v


def brute_max_admissible(c, b, allowed):
    """max{gamma : V(gamma) <= allowed} over the breakpoints and +-inf."""
    finite = [ct / bt for ct, bt in zip(c, b, strict=True)
              if bt != 0 and math.isfinite(ct) and math.isfinite(bt)]
    big = 10 * max([abs(r) for r in finite], default=1.0) + 1e6
    if violations(c, b, big) <= allowed:
        return INF
    ok = [r for r in finite if violations(c, b, r) <= allowed]
    return max(ok) if ok else -INF


def random_steps(rng, n):
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    b[rng.random(n) < 0.15] = 0.0
    a[rng.random(n) < 0.05] = np.nan
    s = rng.exponential(size=n)
    delta = rng.uniform(0.0, 0.3, size=n)
    return a, b, s, delta


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2])
def test_gamma_hat_interval_brute_force(eps):
    rng = np.random.default_rng(3)
    for n in [0, 1, 5, 30, 80, 120]:
        for _ in range(3):
            a, b, s, delta = random_steps(rng, n)
            got = gamma_hat_interval(a, b, s, delta, eps)
            c = (a - delta * s).tolist()
            ranks = order_statistic_ranks(n, eps)
            k = math.floor(round(eps * n, 9))
            if ranks.low is None:
                assert got.low is None
            else:
                assert got.low == brute_max_admissible(c, b.tolist(), min(ranks.low - 1, k))
            if ranks.high is None:
                assert got.high is None
            else:
                assert got.high == brute_max_admissible(c, b.tolist(), max(ranks.high - 1, k))
            if n:
                point = gamma_hat(a, b, s, delta, eps)
                assert got.low is None or got.low <= point
                assert got.high is None or point <= got.high


def test_gamma_hat_interval_is_the_quantile_interval_when_gaps_are_positive():
    rng = np.random.default_rng(4)
    for n in [50, 72, 150, 400]:
        b = rng.exponential(size=n) + 0.01
        a = rng.normal(1.0, 0.5, size=n) * b
        s = rng.exponential(size=n)
        delta = 0.05
        r = (a - delta * s) / b
        for eps in [0.05, 0.1, 0.5]:
            assert gamma_hat_interval(a, b, s, delta, eps) == quantile_interval(r, eps)


def test_eps_zero_is_an_upper_bound_only():
    rng = np.random.default_rng(5)
    a, b, s, delta = random_steps(rng, 200)
    got = gamma_hat_interval(a, b, s, delta, 0.0)
    assert got.low is None
    assert got.high == gamma_hat(a, b, s, delta, 0.0)


def test_kappa_hat_interval_is_the_update_form():
    rng = np.random.default_rng(6)
    n = 150
    b = rng.exponential(size=n)
    a = rng.normal(2.0, 1.0, size=n) * b
    s = rng.exponential(size=n)
    lrs = rng.uniform(0.01, 0.1, size=n)
    got = kappa_hat_interval(a, b, s, lrs, 0.05)
    assert got == gamma_hat_interval(lrs * a, b, lrs**2 * s, 0.5, 0.05)
    assert got.low <= kappa_hat(a, b, s, lrs, 0.05) <= got.high


def synthetic_window(seed, n_steps=20_000, lower_sd=1.5):
    """A plausible full window: mostly b > 0 with r around 1; 8% of steps with b < 0,
    a few of them moving away from x* (c < 0, so r > 0 on the lower side; more of
    them with a larger lower_sd)."""
    rng = np.random.default_rng(seed)
    b = rng.lognormal(-1.0, 0.8, n_steps)
    r = rng.normal(1.0, 0.4, n_steps)
    neg = rng.random(n_steps) < 0.08
    b[neg] = -rng.lognormal(-3.0, 0.5, neg.sum())
    r[neg] = rng.normal(-3.0, lower_sd, neg.sum())
    lrs = np.full(n_steps, 0.1)
    s = rng.lognormal(0.0, 0.5, n_steps)
    a = r * b + (lrs / 2) * s  # c_t = a_t - delta_t s_t = r_t b_t with delta = eta/2
    return a, b, s, lrs


def sampled_coverage(a, b, s, lrs, seed, draws=1000, per_draw=150):
    n_steps = a.shape[0]
    exact = gamma_hat(a, b, s, lrs / 2, 0.05)
    rng = np.random.default_rng(seed)
    hits, lows, highs = 0, [], []
    for _ in range(draws):
        keep = rng.random(n_steps) < per_draw / n_steps
        lo, hi = gamma_hat_interval(a[keep], b[keep], s[keep], lrs[keep] / 2, 0.05)
        hits += (lo is None or lo <= exact) and (hi is None or exact <= hi)
        lows.append(-INF if lo is None else lo)
        highs.append(INF if hi is None else hi)
    return exact, hits / draws, np.array(lows), np.array(highs)


def test_gamma_hat_interval_simulated_coverage():
    a, b, s, lrs = synthetic_window(7)
    exact, coverage, lows, highs = sampled_coverage(a, b, s, lrs, seed=8)
    # the lower-side case the docstring warns about is present in this window
    assert np.sum((b < 0) & ((a - lrs / 2 * s) / b > exact)) > 0
    assert coverage >= 0.93
    # informative: with ~150 samples both sides are almost always finite, and
    # the interval is narrow next to the spread of r (sd 0.4)
    finite = np.isfinite(lows) & np.isfinite(highs)
    assert finite.mean() > 0.95
    assert np.median(highs[finite] - lows[finite]) < 0.6


def test_gamma_hat_interval_coverage_with_many_lower_violators():
    # 8% of steps with b < 0 whose r is spread widely: about 1.7% of all steps
    # violate RP at gamma* on the lower side, a third of the eps budget. The
    # sample then often cannot rule out that no gamma qualifies (low = -inf),
    # and the coverage must still hold.
    a, b, s, lrs = synthetic_window(7, lower_sd=3.0)
    exact, coverage, lows, _ = sampled_coverage(a, b, s, lrs, seed=14)
    c = a - lrs / 2 * s
    assert np.sum((b < 0) & (c / b > exact)) > 0.01 * a.shape[0]
    assert coverage >= 0.93


def test_gamma_bar_interval_simulated_coverage():
    a, b, s, lrs = synthetic_window(9)
    n_steps = a.shape[0]
    exact = gamma_bar(a, b, s, lrs / 2)
    rng = np.random.default_rng(10)
    draws, hits = 1000, 0
    for _ in range(draws):
        keep = rng.random(n_steps) < 150 / n_steps
        lo, hi = gamma_bar_interval(a[keep], b[keep], s[keep], lrs[keep] / 2)
        hits += (lo is None or lo <= exact) and (hi is None or exact <= hi)
    # Fieller is asymptotic, not distribution-free: with lognormal gaps and ~150
    # samples it covers 93.5% here (nominal 95%)
    assert hits / draws >= 0.92


# ---- means and ratios -----------------------------------------------------------------


def test_mean_interval_formula():
    from scipy.stats import t

    x = np.array([1.0, 4.0, 2.5, 3.0, 7.0])
    lo, hi = mean_interval(x, 0.9)
    half = t.ppf(0.95, 4) * np.std(x, ddof=1) / math.sqrt(5)
    assert lo == pytest.approx(x.mean() - half, rel=1e-12)
    assert hi == pytest.approx(x.mean() + half, rel=1e-12)
    assert mean_interval([1.0]) == Interval(None, None)
    assert mean_interval([1.0, np.nan]) == Interval(None, None)


def fieller_statistic(x, y, rho, conf):
    from scipy.stats import t

    n = len(x)
    d = x - rho * y
    return d.mean() ** 2 - t.ppf(0.5 + conf / 2, n - 1) ** 2 * np.var(d, ddof=1) / n


def test_ratio_interval_is_the_fieller_set():
    rng = np.random.default_rng(11)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        y = rng.normal(2.0, 1.0, size=n)
        x = 1.5 * y + rng.normal(0.0, 1.0, size=n)
        lo, hi = ratio_interval(x, y, 0.95)
        if lo is None:
            continue
        scale = 1e-9 * (1 + abs(lo) + abs(hi))
        assert abs(fieller_statistic(x, y, lo, 0.95)) < 1e-8 * (1 + np.var(x))
        assert abs(fieller_statistic(x, y, hi, 0.95)) < 1e-8 * (1 + np.var(x))
        for rho in np.linspace(lo + scale, hi - scale, 7):
            assert fieller_statistic(x, y, rho, 0.95) <= 1e-9
        for rho in [lo - 0.01 * (hi - lo) - scale, hi + 0.01 * (hi - lo) + scale]:
            assert fieller_statistic(x, y, rho, 0.95) > 0
        assert lo <= x.mean() / y.mean() <= hi


def test_ratio_interval_unbounded_when_the_denominator_is_near_zero():
    rng = np.random.default_rng(12)
    y = rng.normal(0.0, 1.0, size=30)
    x = rng.normal(1.0, 1.0, size=30)
    assert ratio_interval(x, y) == Interval(None, None)


def test_bar_intervals_are_fieller_on_the_margins():
    rng = np.random.default_rng(13)
    n = 60
    b = rng.exponential(size=n) + 0.1
    a = rng.normal(1.0, 0.3, size=n) * b
    s = rng.exponential(size=n)
    lrs = np.full(n, 0.2)
    assert gamma_bar_interval(a, b, s, lrs / 2) == ratio_interval(a - lrs / 2 * s, b)
    assert kappa_bar_interval(a, b, s, lrs) == ratio_interval(lrs * a - lrs**2 * s / 2, b)
    lo, hi = gamma_bar_interval(a, b, s, lrs / 2)
    assert lo <= gamma_bar(a, b, s, lrs / 2) <= hi


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="confidence"):
        quantile_interval([1.0, 2.0], 0.5, confidence=1.0)
    with pytest.raises(ValueError, match="q must"):
        quantile_interval([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="n must"):
        order_statistic_ranks(-1, 0.5)
    with pytest.raises(ValueError, match="eps"):
        gamma_hat_interval([1.0], [1.0], [0.0], 0.0, 1.5)
    with pytest.raises(ValueError, match="s must be non-negative"):
        gamma_hat_interval([1.0], [1.0], [-1.0], 0.0, 0.05)
    with pytest.raises(ValueError, match="same length"):
        ratio_interval([1.0, 2.0], [1.0])
