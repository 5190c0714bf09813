"""trajreg.principle.quantities against straightforward loop implementations."""

import numpy as np
import pytest
import torch

from trajreg.principle import (
    cosine,
    default_delta,
    identity_residual,
    loss_gap,
    ratio,
    step_quantities,
    trajectory_quantities,
)


def _random_block(rng, n, d, scale=1.0):
    xs = rng.normal(size=(n + 1, d)) * scale
    lrs = rng.uniform(0.01, 1.0, size=n)
    x_star = rng.normal(size=d) * scale
    return xs, lrs, x_star


def _loop_quantities(xs, lrs, x_star):
    n = xs.shape[0] - 1
    D = [sum((xs[t][j] - x_star[j]) ** 2 for j in range(xs.shape[1])) for t in range(n + 1)]
    a, s, a_u, s_u = [], [], [], []
    for t in range(n):
        u = [xs[t][j] - xs[t + 1][j] for j in range(xs.shape[1])]
        v = [uj / lrs[t] for uj in u]
        diff = [xs[t][j] - x_star[j] for j in range(xs.shape[1])]
        a.append(sum(p * q for p, q in zip(diff, v, strict=True)))
        s.append(sum(q * q for q in v))
        a_u.append(sum(p * q for p, q in zip(diff, u, strict=True)))
        s_u.append(sum(q * q for q in u))
    return [np.array(z) for z in (D, a, s, a_u, s_u)]


@pytest.mark.parametrize("seed", range(10))
def test_trajectory_quantities_matches_loops(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(0, 12)), int(rng.integers(1, 7))
    xs, lrs, x_star = _random_block(rng, n, d)
    q = trajectory_quantities(xs, lrs, x_star)
    D, a, s, a_u, s_u = _loop_quantities(xs, lrs, x_star)
    assert q.D.shape == (n + 1,) and q.a.shape == (n,)
    for got, want in ((q.D, D), (q.a, a), (q.s, s), (q.a_u, a_u), (q.s_u, s_u)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_identity_residual_is_zero_on_trajectories(seed):
    rng = np.random.default_rng(100 + seed)
    n, d = 50, 20
    xs, lrs, _ = _random_block(rng, n, d, scale=10.0 ** rng.integers(-3, 4))
    x_star = xs[-1] if seed % 2 else xs[int(rng.integers(0, n + 1))] + rng.normal(size=d)
    q = trajectory_quantities(xs, lrs, x_star)
    res = identity_residual(q.D, q.a, q.s, lrs)
    assert res.shape == (n,)
    assert np.max(np.abs(res)) <= 1e-10 * np.max(q.D)
    # the raw-update form of the identity: D_t - D_{t+1} = 2 a_u - s_u
    raw = (q.D[:-1] - q.D[1:]) - (2 * q.a_u - q.s_u)
    assert np.max(np.abs(raw)) <= 1e-10 * np.max(q.D)


def test_identity_residual_loop():
    rng = np.random.default_rng(7)
    D, a, s, lrs = rng.normal(size=6), rng.normal(size=5), rng.uniform(size=5), rng.uniform(
        0.1, 1, size=5)
    want = [(D[t] - D[t + 1]) - (2 * lrs[t] * a[t] - lrs[t] ** 2 * s[t]) for t in range(5)]
    np.testing.assert_allclose(identity_residual(D, a, s, lrs), want, rtol=1e-14)
    with pytest.raises(ValueError, match="D"):
        identity_residual(D[:-1], a, s, lrs)


@pytest.mark.parametrize("blocksize", [1, 2, 3, 7, 40])
def test_block_streaming_with_overlap_matches_one_block(blocksize):
    rng = np.random.default_rng(3)
    n, d = 23, 5
    xs, lrs, x_star = _random_block(rng, n, d)
    whole = trajectory_quantities(xs, lrs, x_star)
    D, parts = [], {"a": [], "s": [], "a_u": [], "s_u": []}
    for start in range(0, n, blocksize):
        stop = min(start + blocksize, n)
        q = trajectory_quantities(xs[start:stop + 1], lrs[start:stop], x_star)
        D.append(q.D if start == 0 else q.D[1:])
        for key, chunks in parts.items():
            chunks.append(getattr(q, key))
    np.testing.assert_array_equal(np.concatenate(D), whole.D)
    for key, chunks in parts.items():
        np.testing.assert_array_equal(np.concatenate(chunks), getattr(whole, key))


def test_float32_rows_are_converted_before_subtracting(tmp_path):
    rng = np.random.default_rng(11)
    xs = (1000.0 + rng.normal(size=(6, 4)) * 1e-3).astype(np.float32)
    lrs = np.full(5, 0.1)
    x_star = xs[-1].astype(np.float64)
    mm = np.lib.format.open_memmap(tmp_path / "xs.npy", mode="w+", dtype=np.float32,
                                   shape=xs.shape)
    mm[:] = xs
    want = trajectory_quantities(xs.astype(np.float64), lrs, x_star)
    for got in (trajectory_quantities(mm, lrs, x_star), trajectory_quantities(xs, lrs, x_star)):
        for key in ("D", "a", "s", "a_u", "s_u"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key))


def test_torch_inputs_are_accepted():
    rng = np.random.default_rng(5)
    xs, lrs, x_star = _random_block(rng, 4, 3)
    want = trajectory_quantities(xs, lrs, x_star)
    xs_t = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    got = trajectory_quantities(xs_t, torch.tensor(lrs), torch.tensor(x_star))
    np.testing.assert_array_equal(got.a, want.a)
    got16 = trajectory_quantities(torch.tensor(xs).to(torch.bfloat16), lrs, x_star)
    assert got16.D.dtype == np.float64


def test_step_quantities_matches_block():
    rng = np.random.default_rng(9)
    xs, lrs, x_star = _random_block(rng, 5, 4)
    q = trajectory_quantities(xs, lrs, x_star)
    for t in range(5):
        D, a, s = step_quantities(xs[t], xs[t + 1], x_star, lrs[t])
        assert isinstance(D, float) and isinstance(a, float) and isinstance(s, float)
        assert (D, a, s) == (q.D[t], q.a[t], q.s[t])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lrs": [0.1, 0.0]}, "lrs"),
        ({"lrs": [0.1, -1.0]}, "lrs"),
        ({"lrs": [0.1, float("nan")]}, "lrs"),
        ({"lrs": [0.1, float("inf")]}, "lrs"),
        ({"lrs": [0.1]}, "lrs"),
        ({"x_star": [0.0, 0.0, 0.0]}, "x_star"),
        ({"xs": [1.0, 2.0, 3.0]}, "xs"),
    ],
)
def test_trajectory_quantities_rejects_bad_input(kwargs, match):
    args = {"xs": np.zeros((3, 2)), "lrs": [0.1, 0.1], "x_star": [0.0, 0.0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        trajectory_quantities(**args)


def test_step_quantities_rejects_bad_lr_and_shapes():
    with pytest.raises(ValueError, match="lr"):
        step_quantities([1.0], [0.0], [0.0], 0.0)
    with pytest.raises(ValueError, match="length"):
        step_quantities([1.0, 2.0], [0.0], [0.0], 0.1)


def test_loss_gap():
    np.testing.assert_array_equal(loss_gap([3.0, 2.0], [1.0, 2.5]), [2.0, -0.5])
    np.testing.assert_array_equal(loss_gap([3.0, 2.0], 1.0), [2.0, 1.0])
    with pytest.raises(ValueError, match="length"):
        loss_gap([3.0, 2.0], [1.0])


def test_cosine_matches_loop_and_nan_convention():
    rng = np.random.default_rng(2)
    xs, lrs, x_star = _random_block(rng, 8, 3)
    xs[3] = xs[4]  # zero update: s = 0
    xs[5] = x_star  # D = 0
    q = trajectory_quantities(xs, lrs, x_star)
    c = cosine(q.a, q.D, q.s)
    for t in range(8):
        if q.D[t] * q.s[t] == 0:
            assert np.isnan(c[t])
        else:
            u = xs[t] - xs[t + 1]
            diff = xs[t] - x_star
            want = diff @ u / (np.linalg.norm(diff) * np.linalg.norm(u))
            assert c[t] == pytest.approx(want, rel=1e-12)
    np.testing.assert_array_equal(c, cosine(q.a, q.D[:-1], q.s))
    assert np.all(np.abs(c[np.isfinite(c)]) <= 1 + 1e-12)


def test_ratio_and_default_delta():
    rng = np.random.default_rng(4)
    a, s = rng.normal(size=10), rng.uniform(size=10)
    b = rng.normal(size=10)
    b[[2, 5]] = 0.0
    lrs = rng.uniform(0.1, 1.0, size=10)
    delta = default_delta(lrs)
    np.testing.assert_array_equal(delta, lrs / 2)
    r = ratio(a, b, s, delta)
    for t in range(10):
        if b[t] == 0:
            assert np.isnan(r[t])
        else:
            assert r[t] == pytest.approx((a[t] - lrs[t] / 2 * s[t]) / b[t], rel=1e-14)
    r_scalar = ratio(a, b, s, 0.3)
    assert r_scalar[0] == pytest.approx((a[0] - 0.3 * s[0]) / b[0], rel=1e-14)
    with pytest.raises(ValueError, match="delta"):
        ratio(a, b, s, delta[:-1])
    with pytest.raises(ValueError, match="lrs"):
        default_delta([0.1, 0.0])
