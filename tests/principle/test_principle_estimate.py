"""gamma_hat and friends against brute-force references."""

import math

import numpy as np
import pytest
import torch

from trajreg.principle import (
    fraction_obeying,
    gamma_bar,
    gamma_bar_per_epoch,
    gamma_hat,
    gamma_hat_per_epoch,
    kappa_bar,
    kappa_hat,
    r_quantiles,
    rp_holds,
    star_convex_fraction,
    star_convexity,
)

INF = math.inf


def _delta_list(delta, n):
    return list(np.broadcast_to(np.asarray(delta, dtype=float), (n,)))


def _step_ok(a, b, s, d, gamma):
    """RP(gamma; d) at one step, straight from docs/principle.md's case analysis."""
    c = a - d * s
    if not (math.isfinite(c) and math.isfinite(b)):
        return False
    if b > 0:
        return gamma <= c / b
    if b < 0:
        return gamma >= c / b
    return c >= 0


def _violations(a, b, s, delta, gamma):
    return sum(not _step_ok(a[t], b[t], s[t], delta[t], gamma) for t in range(len(a)))


def brute_gamma_hat(a, b, s, delta, eps):
    n = len(a)
    if n == 0:
        return math.nan
    delta = _delta_list(delta, n)
    k = math.floor(round(eps * n, 9))
    breaks = []
    for t in range(n):
        c = a[t] - delta[t] * s[t]
        if b[t] != 0 and math.isfinite(c) and math.isfinite(b[t]) and math.isfinite(c / b[t]):
            breaks.append(c / b[t])
    big = 2 * max([abs(r) for r in breaks], default=1.0) + 1e6
    if _violations(a, b, s, delta, big) <= k:
        return INF
    cands = {-big}
    for r in breaks:
        cands |= {r, math.nextafter(r, INF), math.nextafter(r, -INF)}
    admissible = [g for g in cands if _violations(a, b, s, delta, g) <= k]
    return max(admissible) if admissible else -INF


def _random_case(rng):
    n = int(rng.integers(0, 30))
    if rng.random() < 0.5:  # small integers: many ties and b == 0
        a = rng.integers(-3, 4, size=n).astype(float)
        b = rng.integers(-2, 3, size=n).astype(float)
        s = rng.integers(0, 3, size=n).astype(float)
    else:
        a = rng.normal(size=n) + rng.uniform(0, 2)
        b = rng.normal(size=n) + rng.uniform(-0.5, 1.5)
        b[rng.random(n) < 0.1] = 0.0
        s = rng.uniform(0, 2, size=n)
    if rng.random() < 0.5:
        delta = float(rng.choice([0.0, 0.05, 0.5]))
    else:
        delta = rng.choice([0.0, 0.25, 0.5], size=n) if rng.random() < 0.5 else rng.uniform(
            0, 1, size=n)
    eps = float(rng.choice([0.0, 0.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9]))
    return a, b, s, delta, eps


@pytest.mark.parametrize("seed", range(400))
def test_gamma_hat_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a, b, s, delta, eps = _random_case(rng)
    got = gamma_hat(a, b, s, delta, eps)
    want = brute_gamma_hat(list(a), list(b), list(s), delta, eps)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want
    # maximality, checked with rp_holds: at most k violations at gamma_hat, more just above
    n = len(a)
    k = math.floor(round(eps * n, 9))
    if math.isfinite(got):
        assert np.count_nonzero(~rp_holds(a, b, s, got, delta)) <= k
        assert np.count_nonzero(~rp_holds(a, b, s, math.nextafter(got, INF), delta)) > k
        assert fraction_obeying(a, b, s, delta, got) >= (n - k) / n - 1e-12


@pytest.mark.parametrize(
    "a, b, s, delta, eps, want",
    [
        # all b > 0: the smallest ratio
        ([3.0, 2.0, 5.0], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], 0.0, 0.0, 2.0),
        # delta: r = (a - delta s)/b = [2, 1.5]
        ([3.0, 2.0], [1.0, 1.0], [2.0, 1.0], 0.5, 0.0, 1.5),
        # per-step delta: r = [3 - 1*2, 2 - 0*1] = [1, 2]
        ([3.0, 2.0], [1.0, 1.0], [2.0, 1.0], [1.0, 0.0], 0.0, 1.0),
        # only b < 0, satisfiable upward: every large gamma qualifies
        ([1.0, -2.0], [-1.0, -1.0], [0.0, 0.0], 0.0, 0.0, INF),
        # b == 0 satisfied does not constrain
        ([0.0, 3.0], [0.0, 1.0], [0.0, 0.0], 0.0, 0.0, 3.0),
        ([1.0], [0.0], [0.0], 0.0, 0.0, INF),
        # b == 0 violated: no gamma at eps = 0, any gamma once one violation is allowed
        ([-1.0, 3.0], [0.0, 1.0], [0.0, 0.0], 0.0, 0.0, -INF),
        ([-1.0, 3.0], [0.0, 1.0], [0.0, 0.0], 0.0, 0.5, 3.0),
        # b == 0 violated through delta s: a - delta s = 1 - 2 < 0
        ([1.0], [0.0], [4.0], 0.5, 0.0, -INF),
        # contradictory: gamma <= 1 (b>0) and gamma >= 2 (b<0)
        ([1.0, 3.0, -2.0], [1.0, 1.0, -1.0], [0.0] * 3, 0.0, 0.0, -INF),
        # one violation allowed (floor(0.4 * 3) = 1): gamma = 3 violates only the r=1 step
        ([1.0, 3.0, -2.0], [1.0, 1.0, -1.0], [0.0] * 3, 0.0, 0.4, 3.0),
        # ties: three steps at r = 2, one at r = 5
        ([2.0, 2.0, 2.0, 5.0], [1.0] * 4, [0.0] * 4, 0.0, 0.5, 2.0),
        ([2.0, 2.0, 2.0, 5.0], [1.0] * 4, [0.0] * 4, 0.0, 0.75, 5.0),
        # tie between an upper and a lower breakpoint: gamma = 2 satisfies both (closed)
        ([2.0, -2.0], [1.0, -1.0], [0.0, 0.0], 0.0, 0.0, 2.0),
        # a lower constraint above every upper one, eps lets the upper go
        ([2.0, -4.0], [1.0, -1.0], [0.0, 0.0], 0.0, 0.5, INF),
        # negative gamma_hat
        ([-1.0, 2.0], [1.0, 1.0], [0.0, 0.0], 0.0, 0.0, -1.0),
        # non-finite data violate for every gamma
        ([3.0, float("nan")], [1.0, 1.0], [0.0, 0.0], 0.0, 0.0, -INF),
        ([3.0, 1.0], [1.0, float("inf")], [0.0, 0.0], 0.0, 0.5, 3.0),
        # eps * n = 0.29 * 100 -> 29 allowed violations, not 28
        ([1.0] * 29 + [2.0] * 71, [1.0] * 100, [0.0] * 100, 0.0, 0.29, 2.0),
    ],
)
def test_gamma_hat_hand_built(a, b, s, delta, eps, want):
    assert gamma_hat(a, b, s, delta, eps) == want
    assert brute_gamma_hat(a, b, s, delta, eps) == want


def test_gamma_hat_empty_and_errors():
    assert math.isnan(gamma_hat([], [], [], 0.5))
    with pytest.raises(ValueError, match="eps"):
        gamma_hat([1.0], [1.0], [0.0], 0.0, eps=1.0)
    with pytest.raises(ValueError, match="eps"):
        gamma_hat([1.0], [1.0], [0.0], 0.0, eps=-0.1)
    with pytest.raises(ValueError, match="delta"):
        gamma_hat([1.0, 2.0], [1.0, 1.0], [0.0, 0.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="delta"):
        gamma_hat([1.0], [1.0], [0.0], float("nan"))
    with pytest.raises(ValueError, match="same length"):
        gamma_hat([1.0, 2.0], [1.0], [0.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="s must be non-negative"):
        gamma_hat([1.0], [1.0], [-1.0], 0.0)
    with pytest.raises(ValueError, match="a must be 1-D"):
        gamma_hat([[1.0]], [1.0], [0.0], 0.0)


def test_gamma_hat_accepts_torch():
    a = torch.tensor([3.0, 2.0], requires_grad=True)
    assert gamma_hat(a, torch.tensor([1.0, 1.0]), torch.zeros(2), torch.tensor(0.0)) == 2.0


def test_gamma_hat_large_n_is_fast():
    rng = np.random.default_rng(0)
    n = 1_000_000
    a, b, s = rng.normal(size=n) + 3, rng.uniform(-0.05, 2, size=n), rng.uniform(size=n)
    g = gamma_hat(a, b, s, 0.01, eps=0.05)
    assert math.isfinite(g)
    assert np.count_nonzero(~rp_holds(a, b, s, g, 0.01)) <= 0.05 * n
    assert np.count_nonzero(~rp_holds(a, b, s, math.nextafter(g, INF), 0.01)) > 0.05 * n


@pytest.mark.parametrize("seed", range(30))
def test_rp_holds_matches_direct_inequality(seed):
    rng = np.random.default_rng(1000 + seed)
    a, b, s, delta, _ = _random_case(rng)
    n = len(a)
    d = _delta_list(delta, n)
    for gamma in (float(rng.normal() * 3), -INF, INF, 0.0):
        got = rp_holds(a, b, s, gamma, delta)
        assert got.dtype == bool and got.shape == (n,)
        for t in range(n):
            gb = 0.0 if b[t] == 0 else gamma * b[t]
            assert got[t] == (a[t] >= gb + d[t] * s[t]), (t, gamma)
        frac = fraction_obeying(a, b, s, delta, gamma)
        if n:
            assert frac == pytest.approx(np.mean(got))
        else:
            assert math.isnan(frac)
    assert not rp_holds(a, b, s, float("nan"), delta).any()
    assert math.isnan(fraction_obeying(a, b, s, delta, float("nan")))
    with pytest.raises(ValueError, match="gamma"):
        rp_holds(a, b, s, [1.0, 2.0], delta)


@pytest.mark.parametrize("seed", range(40))
def test_kappa_hat_is_lr_times_gamma_hat_for_constant_lr(seed):
    rng = np.random.default_rng(2000 + seed)
    a, b, s, _, eps = _random_case(rng)
    n = len(a)
    eta = float(rng.choice([1e-3, 0.01, 0.1, 0.5, 1.0]))
    g = gamma_hat(a, b, s, eta / 2, eps)
    k = kappa_hat(a, b, s, np.full(n, eta), eps)
    if math.isfinite(g):
        assert k == pytest.approx(eta * g, rel=1e-12, abs=1e-300)
    else:
        assert k == g or (math.isnan(k) and math.isnan(g))


def test_kappa_hat_schedule_uses_raw_quantities():
    rng = np.random.default_rng(5)
    a, b, s = rng.normal(size=20) + 1, rng.normal(size=20) + 1, rng.uniform(size=20)
    lrs = rng.uniform(0.01, 1.0, size=20)
    assert kappa_hat(a, b, s, lrs, 0.1) == gamma_hat(lrs * a, b, lrs**2 * s, 0.5, 0.1)
    assert kappa_bar(a, b, s, lrs) == pytest.approx(
        sum(lrs[t] * a[t] - lrs[t] ** 2 * s[t] / 2 for t in range(20)) / sum(b), rel=1e-12)
    with pytest.raises(ValueError, match="lrs"):
        kappa_hat(a, b, s, lrs[:-1])


def test_gamma_bar():
    rng = np.random.default_rng(6)
    a, b, s, d = rng.normal(size=15), rng.normal(size=15) + 1, rng.uniform(size=15), 0.3
    want = sum(a[t] - d * s[t] for t in range(15)) / sum(b)
    assert gamma_bar(a, b, s, d) == pytest.approx(want, rel=1e-12)
    assert math.isnan(gamma_bar([], [], [], 0.5))
    assert math.isnan(gamma_bar([1.0, 2.0], [1.0, -1.0], [0.0, 0.0], 0.5))


def test_per_epoch_matches_masks():
    rng = np.random.default_rng(8)
    n = 60
    a, b, s = rng.normal(size=n) + 1, rng.normal(size=n) + 0.5, rng.uniform(size=n)
    delta = rng.uniform(0, 0.5, size=n)
    epoch = rng.choice([3, 1, 7, 2], size=n)  # unsorted, non-contiguous labels
    labels = sorted(set(epoch.tolist()))
    for eps in (0.0, 0.1):
        got = gamma_hat_per_epoch(a, b, s, delta, epoch, eps)
        want = [brute_gamma_hat(list(a[epoch == e]), list(b[epoch == e]), list(s[epoch == e]),
                                delta[epoch == e], eps) for e in labels]
        assert got.tolist() == want
    got_bar = gamma_bar_per_epoch(a, b, s, delta, epoch)
    want_bar = [gamma_bar(a[epoch == e], b[epoch == e], s[epoch == e], delta[epoch == e])
                for e in labels]
    np.testing.assert_allclose(got_bar, want_bar, rtol=1e-12)
    # float labels holding integers and torch labels are accepted
    np.testing.assert_array_equal(gamma_bar_per_epoch(a, b, s, delta, epoch.astype(float)),
                                  got_bar)
    np.testing.assert_array_equal(gamma_bar_per_epoch(a, b, s, delta, torch.tensor(epoch)),
                                  got_bar)
    with pytest.raises(ValueError, match="epoch"):
        gamma_hat_per_epoch(a, b, s, delta, epoch + 0.5)
    with pytest.raises(ValueError, match="epoch"):
        gamma_hat_per_epoch(a, b, s, delta, epoch[:-1])
    assert gamma_hat_per_epoch([], [], [], 0.0, np.array([], dtype=int)).shape == (0,)


def test_r_quantiles():
    rng = np.random.default_rng(9)
    n = 40
    a, b, s = rng.normal(size=n), rng.normal(size=n), rng.uniform(size=n)
    b[:5] = 0.0
    b[5] = float("nan")
    q = (0.05, 0.25, 0.5, 0.75, 0.95)
    got = r_quantiles(a, b, s, 0.2)
    assert list(got) == ["0.05", "0.25", "0.5", "0.75", "0.95"]
    r = [(a[t] - 0.2 * s[t]) / b[t] for t in range(n) if b[t] != 0 and np.isfinite(b[t])]
    for key, qi in zip(got, q, strict=True):
        assert got[key] == pytest.approx(float(np.quantile(r, qi)), rel=1e-12)
    empty = r_quantiles([1.0], [0.0], [0.0], 0.0)
    assert all(math.isnan(v) for v in empty.values()) and len(empty) == 5
    with pytest.raises(ValueError, match="q"):
        r_quantiles(a, b, s, 0.2, q=(1.5,))


def test_star_convexity():
    a = np.array([2.0, 0.5, 1.0, -1.0, float("nan")])
    b = np.array([1.0, 1.0, 1.0, -2.0, 0.0])
    np.testing.assert_array_equal(star_convexity(a, b), [True, False, True, True, False])
    assert star_convex_fraction(a, b) == 0.6
    np.testing.assert_array_equal(star_convexity(a, b),
                                  rp_holds(a, b, np.zeros(5), 1.0, 0.0))
    assert math.isnan(star_convex_fraction([], []))
