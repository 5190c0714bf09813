"""CountSketch: the hash recipe (numpy, Python ints, torch), distribution, exactness, moments."""

import itertools
import math

import numpy as np
import pytest
import torch

from trajreg.principle import (
    countsketch,
    countsketch_variance,
    hash32,
    hash_buckets,
    hash_signs,
    sketch_quantities,
    sketch_relative_error,
    sketch_sd,
    trajectory_quantities,
)

M32 = 0xFFFFFFFF


# ---- the integer recipe, three ways --------------------------------------------------


def py_mix32(x):
    """The docstring's mix32 with plain Python big-int products reduced mod 2^32."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def py_hash32(i, seed, stream):
    key = py_mix32(py_mix32(seed) ^ stream)
    key2 = py_mix32(key ^ (i >> 32))
    return py_mix32(key2 ^ (i & M32))


def py_split_mul32(x, m, seen):
    """The split product of the recipe, recording every intermediate value."""
    p1 = x * (m & 0xFFFF)
    p2 = x * (m >> 16)
    p3 = (p2 & 0xFFFF) << 16
    out = (p1 + p3) & M32
    seen.extend([p1, p2, p3, p1 + p3])
    return out


def torch_mix32(x):
    def mul32(x, m):
        return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & M32

    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def torch_hash32(i, seed, stream):
    """The recipe in torch int64 tensor ops, as a recorder would write it."""
    i = torch.as_tensor(i, dtype=torch.int64)
    key = torch_mix32(torch_mix32(torch.tensor(seed, dtype=torch.int64)) ^ stream)
    key2 = torch_mix32(key ^ (i >> 32))
    return torch_mix32(key2 ^ (i & M32))


def sample_indices(rng):
    small = rng.integers(0, 10**7, size=300)
    big = rng.integers(0, 2**62, size=300)
    edges = np.array([0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**62, 2**63 - 1])
    return np.concatenate([small, big, edges]).astype(np.int64)


def test_hash_matches_python_big_int_reference():
    rng = np.random.default_rng(0)
    idx = sample_indices(rng)
    for seed in [0, 1, 12345, 2**32 - 1]:
        for stream in [1, 2]:
            got = hash32(idx, seed, stream)
            assert got.dtype == np.int64
            assert got.tolist() == [py_hash32(int(i), seed, stream) for i in idx]


def test_split_multiply_is_exact_and_stays_below_2_to_49():
    rng = np.random.default_rng(1)
    seen = []
    for x in [0, 1, M32, *rng.integers(0, 2**32, size=2000).tolist()]:
        for m in [0x7FEB352D, 0x846CA68B, M32]:
            assert py_split_mul32(int(x), m, seen) == (int(x) * m) % 2**32
    assert max(seen) < 2**49


def test_hash_is_bit_for_bit_the_torch_int64_recipe():
    rng = np.random.default_rng(2)
    idx = sample_indices(rng)
    for seed in [0, 7, 2**32 - 1]:
        for stream in [1, 2]:
            t = torch_hash32(torch.from_numpy(idx), seed, stream)
            assert t.tolist() == hash32(idx, seed, stream).tolist()
        k = 4096
        buckets_t = (torch_hash32(torch.from_numpy(idx), seed, 1) * k) >> 32
        signs_t = 1 - 2 * (torch_hash32(torch.from_numpy(idx), seed, 2) >> 31)
        assert buckets_t.tolist() == hash_buckets(idx, k, seed).tolist()
        assert signs_t.tolist() == hash_signs(idx, seed).tolist()


def test_golden_values():
    # Pinned so that any other implementation can be checked against them.
    assert hash32(np.array([0, 1, 2, 2**32, 2**40 + 5]), 0, 1).tolist() == [
        py_hash32(i, 0, 1) for i in [0, 1, 2, 2**32, 2**40 + 5]]
    assert hash32(np.arange(3), 0, 1).tolist() == [604019821, 3412962653, 3431222951]
    assert hash_buckets(np.arange(8), 16, 3).tolist() == [
        (py_hash32(i, 3, 1) * 16) >> 32 for i in range(8)]
    assert hash_signs(np.arange(8), 3).tolist() == [
        1 - 2 * (py_hash32(i, 3, 2) >> 31) for i in range(8)]


def test_hash_accepts_any_integer_input_and_shape():
    idx = np.arange(12, dtype=np.int32).reshape(3, 4)
    got = hash_buckets(idx, 5, 9)
    assert got.shape == (3, 4)
    assert got.ravel().tolist() == hash_buckets(np.arange(12), 5, 9).tolist()
    expected = hash_buckets(np.arange(12), 5, 9).tolist()
    assert hash_buckets(torch.arange(12), 5, 9).tolist() == expected
    assert hash_buckets(7, 5, 9).tolist() == hash_buckets([7], 5, 9)[0]
    # mixed high words (the per-element key path) equal the one-word path piece by piece
    mixed = np.array([3, 2**33 + 3, 5, 2**40 + 1], dtype=np.int64)
    assert hash32(mixed, 11, 1).tolist() == [hash32(np.array([i]), 11, 1)[0] for i in mixed]


# ---- distribution -------------------------------------------------------------------


def chi2_pvalue(counts):
    from scipy.stats import chi2

    counts = np.asarray(counts, dtype=float)
    expected = counts.sum() / counts.size
    stat = np.sum((counts - expected) ** 2 / expected)
    return chi2.sf(stat, counts.size - 1)


@pytest.mark.parametrize("offset", [0, 2**32 - 50_000, 2**40])
def test_buckets_and_signs_are_well_distributed(offset):
    n, k = 200_000, 64
    idx = np.arange(offset, offset + n, dtype=np.int64)
    for seed in [0, 1, 2]:
        buckets = hash_buckets(idx, k, seed)
        signs = hash_signs(idx, seed)
        assert buckets.min() >= 0 and buckets.max() < k
        assert set(np.unique(signs).tolist()) == {-1, 1}
        assert chi2_pvalue(np.bincount(buckets, minlength=k)) > 1e-4
        assert abs(signs.mean()) < 4 / math.sqrt(n)
        # bucket and sign independent: the 2k cells of (bucket, sign)
        joint = np.bincount(buckets * 2 + (signs > 0), minlength=2 * k)
        assert chi2_pvalue(joint) > 1e-4
        # consecutive indices: sign products average 0, neighbours collide 1/k of the time
        assert abs(np.mean(signs[:-1] * signs[1:])) < 4 / math.sqrt(n)
        same = np.mean(buckets[:-1] == buckets[1:])
        assert abs(same - 1 / k) < 4 * math.sqrt(1 / k / n)


def test_pairs_over_seeds_collide_one_in_k_and_have_uncorrelated_signs():
    idx = np.arange(40)
    k, seeds = 8, 600
    buckets = np.stack([hash_buckets(idx, k, s) for s in range(seeds)])
    signs = np.stack([hash_signs(idx, s) for s in range(seeds)]).astype(float)
    iu = np.triu_indices(idx.size, 1)
    collide = (buckets[:, :, None] == buckets[:, None, :])[:, iu[0], iu[1]].mean(axis=0)
    prods = (signs[:, :, None] * signs[:, None, :])[:, iu[0], iu[1]].mean(axis=0)
    npairs = collide.size
    # every pair: within 5 standard errors; all pairs together: the mean on target
    assert np.all(np.abs(collide - 1 / k) < 5 * math.sqrt((1 / k) * (1 - 1 / k) / seeds))
    assert np.all(np.abs(prods) < 5 / math.sqrt(seeds))
    assert abs(collide.mean() - 1 / k) < 4 * math.sqrt(1 / k / seeds / npairs) * 3
    assert abs(prods.mean()) < 4 / math.sqrt(seeds * npairs) * 3


def test_different_seeds_give_different_hashes():
    idx = np.arange(10_000)
    a = hash_buckets(idx, 1024, 0)
    b = hash_buckets(idx, 1024, 1)
    assert abs(np.mean(a == b) - 1 / 1024) < 0.002
    assert np.array_equal(hash_buckets(idx, 1024, 0), a)  # deterministic


# ---- the sketch ---------------------------------------------------------------------


def brute_countsketch(x, k, seed, offset=0):
    out = [0.0] * k
    for m, xm in enumerate(x):
        i = offset + m
        out[(py_hash32(i, seed, 1) * k) >> 32] += (1 - 2 * (py_hash32(i, seed, 2) >> 31)) * xm
    return out


def test_countsketch_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    for k, seed, offset in [(1, 0, 0), (7, 5, 0), (64, 9, 2**33 + 17)]:
        assert countsketch(x, k, seed, offset).tolist() == brute_countsketch(
            x.tolist(), k, seed, offset)


def test_concatenation_is_bit_for_bit():
    rng = np.random.default_rng(4)
    d, k, seed = 100_003, 512, 21
    # float32 values on the grid 2^-20 with |x| < 64: every partial sum of a bucket is
    # a multiple of 2^-20 below 2^23, exact in float64, so any split gives the same bits
    x = np.round(rng.normal(size=d) * rng.choice([1e-3, 1.0, 30.0], size=d) * 2**20) / 2**20
    x = np.clip(x, -63, 63).astype(np.float32)
    whole = countsketch(x, k, seed)
    for cuts in [[1], [50_000], [3, 77_777], [10, 20, 30, 99_999]]:
        parts = np.split(x, cuts)
        total = np.zeros(k)
        start = 0
        for part in parts:
            total = total + countsketch(part, k, seed, offset=start)
            start += part.size
        assert np.array_equal(total, whole)
    # a block of rows equals its rows one by one
    rows = np.stack([x[:1000], x[1000:2000]])
    assert np.array_equal(countsketch(rows, k, seed, 5),
                          np.stack([countsketch(r, k, seed, 5) for r in rows]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concatenation_of_general_values_agrees_to_rounding(dtype):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=20_000) * np.exp(rng.normal(scale=8.0, size=20_000))).astype(dtype)
    whole = countsketch(x, 128, 3)
    parts = countsketch(x[:12_345], 128, 3) + countsketch(x[12_345:], 128, 3, offset=12_345)
    scale = np.bincount(hash_buckets(np.arange(x.size), 128, 3), weights=np.abs(x), minlength=128)
    assert np.all(np.abs(whole - parts) <= 1e-13 * scale)


def test_countsketch_is_linear():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 5000))
    lhs = countsketch(2.0 * x - 3.0 * y, 256, 8)
    rhs = 2.0 * countsketch(x, 256, 8) - 3.0 * countsketch(y, 256, 8)
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-10)


def test_variance_formula_by_enumerating_every_hash():
    # d = 3 coordinates, k = 2 buckets: all 2^3 bucket maps and 2^3 sign maps, equally likely
    x = np.array([1.0, -2.0, 0.5])
    y = np.array([3.0, 1.0, -1.5])
    k = 2
    values = []
    for h in itertools.product(range(k), repeat=3):
        for sg in itertools.product([-1.0, 1.0], repeat=3):
            sx = np.zeros(k)
            sy = np.zeros(k)
            for i in range(3):
                sx[h[i]] += sg[i] * x[i]
                sy[h[i]] += sg[i] * y[i]
            values.append(float(sx @ sy))
    values = np.array(values)
    assert values.mean() == pytest.approx(float(x @ y), abs=1e-12)
    assert values.var() == pytest.approx(countsketch_variance(x, y, k), rel=1e-12)
    brute = (sum(x[i] ** 2 * y[j] ** 2 + x[i] * y[i] * x[j] * y[j]
                 for i in range(3) for j in range(3) if i != j)) / k
    assert countsketch_variance(x, y, k) == pytest.approx(brute, rel=1e-12)


def test_unbiased_and_variance_over_seeds():
    rng = np.random.default_rng(7)
    d, k, seeds = 60, 16, 4000
    x = rng.normal(size=d)
    y = 0.6 * x + rng.normal(size=d)
    est_xy, est_xx = [], []
    for seed in range(seeds):
        sx, sy = countsketch(x, k, seed), countsketch(y, k, seed)
        est_xy.append(sx @ sy)
        est_xx.append(sx @ sx)
    for est, (u, v) in [(np.array(est_xy), (x, y)), (np.array(est_xx), (x, x))]:
        var = countsketch_variance(u, v, k)
        assert abs(est.mean() - u @ v) < 4 * math.sqrt(var / seeds)
        # sample variance within ~4 of its standard errors (fourth moments are mild here)
        assert est.var(ddof=1) == pytest.approx(var, rel=0.12)


def test_sketch_sd_bounds_the_exact_variance():
    rng = np.random.default_rng(9)
    for _ in range(20):
        x, y = rng.normal(size=(2, 30))
        x[:3] *= 10.0  # a few large coordinates: the dropped term matters
        sd = sketch_sd([x @ y], [x @ x], [y @ y], 64)[0]
        assert countsketch_variance(x, y, 64) <= sd**2 * (1 + 1e-12)
        assert sd**2 == pytest.approx(((x @ x) * (y @ y) + (x @ y) ** 2) / 64, rel=1e-12)


def test_relative_error_formula():
    assert sketch_relative_error(0.2, 4096) == pytest.approx(math.sqrt(26) / 64)
    assert sketch_relative_error(np.array([1.0, 0.0]), 100).tolist() == [
        pytest.approx(math.sqrt(2) / 10), math.inf]


def test_sketch_quantities_is_trajectory_quantities_on_sketches():
    rng = np.random.default_rng(8)
    xs = rng.normal(size=(6, 9))
    lrs = rng.uniform(0.1, 0.5, size=5)
    x_star = rng.normal(size=9)
    # identity "sketch": the exact quantities
    q = sketch_quantities(xs, lrs, x_star)
    t = trajectory_quantities(xs, lrs, x_star)
    for name in ["D", "a", "s", "a_u", "s_u"]:
        assert np.array_equal(getattr(q, name), getattr(t, name)), name
    cos = t.a / np.sqrt(t.D[:-1] * t.s)
    np.testing.assert_allclose(q.cos, cos, rtol=1e-12)
    # with an exact s given, it is used for s, s_u and the cosine
    s_exact = t.s * 1.5
    q2 = sketch_quantities(xs, lrs, x_star, s=s_exact)
    assert np.array_equal(q2.s, s_exact)
    np.testing.assert_allclose(q2.s_u, lrs**2 * s_exact, rtol=1e-15)
    np.testing.assert_allclose(q2.cos, t.a / np.sqrt(t.D[:-1] * s_exact), rtol=1e-12)
    # real sketches: S(x_t - x*) by linearity
    k, seed = 32, 4
    sq = sketch_quantities(countsketch(xs, k, seed), lrs, countsketch(x_star, k, seed))
    direct = countsketch(xs - x_star, k, seed)
    np.testing.assert_allclose(sq.D, np.sum(direct**2, axis=1), rtol=1e-12)


def test_sketch_quantities_zero_denominator_is_nan():
    q = sketch_quantities([[1.0, 0.0], [1.0, 0.0]], [0.1], [1.0, 0.0])
    assert q.D.tolist() == [0.0, 0.0]
    assert math.isnan(q.cos[0])


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="k must"):
        hash_buckets([1, 2], 0, 0)
    with pytest.raises(ValueError, match="seed must"):
        hash_signs([1, 2], -1)
    with pytest.raises(ValueError, match="seed must"):
        hash_signs([1, 2], 2**32)
    with pytest.raises(ValueError, match="index must be non-negative"):
        hash_signs([-1], 0)
    with pytest.raises(ValueError, match="index must hold integers"):
        hash_signs([1.5], 0)
    with pytest.raises(ValueError, match="offset must"):
        countsketch([1.0], 4, 0, offset=-3)
    with pytest.raises(ValueError, match="x must be 1-D or 2-D"):
        countsketch(np.zeros((2, 2, 2)), 4, 0)
    with pytest.raises(ValueError, match="sx_star"):
        sketch_quantities(np.zeros((2, 4)), [0.1], np.zeros(3))
    with pytest.raises(ValueError, match="lrs"):
        sketch_quantities(np.zeros((3, 4)), [0.1], np.zeros(4))
