"""Record mode ``sketch``: the torch CountSketch against the numpy reference, and real runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from trajreg.errors import ConfigError
from trajreg.principle import countsketch, hash_buckets, hash_signs
from trajreg.record.modes import MODE_NAMES, get_mode
from trajreg.record.modes.sample import SampleStore, StepSampler
from trajreg.record.modes.sketch import (
    CHUNK,
    DEFAULT_DIM,
    G_FILE,
    GRAD_SKETCHES,
    S_FILE,
    SKETCHES,
    RangesCountSketch,
    SketchMode,
    TorchCountSketch,
    hash_seed,
    torch_buckets,
    torch_signs,
)
from trajreg.record.recorder import Recorder
from trajreg.record.store import TrajectoryStore
from trajreg.run.runner import analyze, run
from trajreg.train.config import load_config

SMALL = {"model": {"width": 16}, "train": {"epochs": 4}}  # d = 1546


def _cfg(record, **over):
    return load_config(tiny(record=record, **{**SMALL, **over}))


@pytest.mark.parametrize("start", [0, 12345, (5 << 32) - 100])  # crosses a high word
def test_torch_hash_equals_the_numpy_recipe(start):
    idx = torch.arange(start, start + 5000, dtype=torch.int64)
    for k in (1, 7, 4096, 2**31 - 1):
        assert np.array_equal(torch_buckets(idx, k, 99).numpy(), hash_buckets(idx.numpy(), k, 99))
    assert np.array_equal(torch_signs(idx, 2**32 - 1).numpy(),
                          hash_signs(idx.numpy(), 2**32 - 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_countsketch_equals_numpy_countsketch(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30_000, generator=g, dtype=dtype)
    for offset in (0, 777):
        got = TorchCountSketch(len(x), 1000, 5, offset=offset, chunk=4096)(x).numpy()
        want = countsketch(x.numpy(), 1000, 5, offset=offset)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(x.numpy()).sum())


def _sketch_tolerance(x, k, seed, offset=0):
    """Per bucket, the bound on |S x - countsketch(x)| from float64 rounding alone.

    Bucket j sums its n_j entries sigma(i) x_i (exact in float64, float32 or float64
    x): countsketch in index order, TorchCountSketch positives and negatives apart and
    then their difference, in chunks and in another order. Recursive summation of n
    terms errs by at most (n - 1) u sum |x_i| (u = 2^-53, to first order), so each
    side is within n_j u sum_{h(i)=j} |x_i| of the exact sum and the two within
    n_j 2^-52 sum_{h(i)=j} |x_i|. Summing in float32 would err by about 2^-24 of the
    same: 2^29 times more."""
    idx = np.arange(offset, offset + len(x), dtype=np.int64)
    buckets = hash_buckets(idx, k, seed)
    mass = np.bincount(buckets, weights=np.abs(np.asarray(x, dtype=np.float64)), minlength=k)
    return np.bincount(buckets, minlength=k) * 2.0**-52 * mass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_sketch_equals_countsketch_to_float64_rounding(dtype, one_thread):
    """Several chunks and a ragged last one, offsets past 2^32, and a shard's runs."""
    g = torch.Generator().manual_seed(3)
    d = 2 * CHUNK + 12_347  # a multiple of nothing in sight
    x = (torch.randn(d, generator=g, dtype=torch.float64) * 1e3).to(dtype)
    xn = x.numpy()
    for k, offset in ((1000, 0), (4093, 777), (16384, (3 << 32) - 5000)):
        got = TorchCountSketch(d, k, 5, offset=offset, chunk=4096)(x).numpy()
        want = countsketch(xn, k, 5, offset=offset)
        assert np.all(np.abs(got - want) <= _sketch_tolerance(xn, k, 5, offset))
    # a shard: runs of the global index in the shard's order, not contiguous
    runs = [(5_000_000, 40_000), (17, 100_000), (300_000, d - 140_000)]
    got = RangesCountSketch(runs, 2048, 9)(x).numpy()
    parts, pos = [], 0
    for start, n in runs:
        parts.append(countsketch(xn[pos : pos + n], 2048, 9, offset=start))
        pos += n
    bound = sum(_sketch_tolerance(xn[p : p + n], 2048, 9, s)
                for (s, n), p in zip(runs, np.cumsum([0] + [n for _, n in runs]), strict=False))
    assert np.all(np.abs(got - sum(parts)) <= bound + 4 * 2.0**-53 * np.abs(sum(parts)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recorded_sketches_and_norms_equal_the_references(tmp_path, dtype, one_thread):
    """What the mode's one pass stores (S x_t, S g_t, s_t, ||g_t||^2) against
    countsketch and numpy's float64 norms of the exact iterates and gradients it also
    kept (check rate 1): the sketches within ``_sketch_tolerance``, the norms, sums of
    d non-negative float64 terms each, within d 2^-52 relative."""
    torch.manual_seed(0)
    model = torch.nn.Linear(331, 223, dtype=dtype)  # d = 74036: two chunks, ragged
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mode = SketchMode(dim=1024, check_rate=1.0, seed=6)
    rec = Recorder(opt, tmp_path, mode=mode)
    lrs = [0.05, 0.02, 0.04, 0.01, 0.03]
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        loss = model(torch.randn(8, 331, dtype=dtype)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec.close()
    d, T, seed = 331 * 223 + 223, len(lrs), hash_seed(6)
    assert d > CHUNK and d % CHUNK
    sample = SampleStore(tmp_path)
    xs = [sample.row(t).astype(np.float64) for t in range(T + 1)]
    gs = [sample.grad(t).astype(np.float64) for t in range(T)]
    for name, vectors in ((SKETCHES, xs), (GRAD_SKETCHES, gs)):
        store = TrajectoryStore(tmp_path / name)
        assert store.rows == len(vectors)
        for t, v in enumerate(vectors):
            assert np.all(np.abs(store.row(t) - countsketch(v, 1024, seed))
                          <= _sketch_tolerance(v, 1024, seed)), (name, t)
    s = np.fromfile(tmp_path / S_FILE)
    g2 = np.fromfile(tmp_path / G_FILE)
    want_s = [float((xs[t] - xs[t + 1]) @ (xs[t] - xs[t + 1])) / lrs[t] ** 2 for t in range(T)]
    np.testing.assert_allclose(s, want_s, rtol=d * 2.0**-52, atol=0)
    np.testing.assert_allclose(g2, [float(v @ v) for v in gs], rtol=d * 2.0**-52, atol=0)


def test_sketch_of_a_concatenation_is_the_sum_of_the_parts():
    g = torch.Generator().manual_seed(1)
    # multiples of 2^-10 with small sums: every partial sum is exact in float64
    x = torch.randint(-2**12, 2**12, (20_000,), generator=g).double() / 1024
    whole = TorchCountSketch(len(x), 512, 3)(x)
    cuts = [0, 1, 4999, 13_000, len(x)]
    parts = sum(TorchCountSketch(b - a, 512, 3, offset=a)(x[a:b])
                for a, b in zip(cuts, cuts[1:], strict=False))
    assert torch.equal(parts, whole)
    assert np.array_equal(whole.numpy(), countsketch(x.numpy(), 512, 3))
    # and generic floats: the same to float64 rounding
    y = torch.randn(20_000, generator=g, dtype=torch.float64)
    whole = TorchCountSketch(len(y), 512, 3)(y)
    parts = sum(TorchCountSketch(b - a, 512, 3, offset=a)(y[a:b])
                for a, b in zip(cuts, cuts[1:], strict=False))
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)


def test_inner_products_of_sketches_are_unbiased_over_hash_seeds():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2000, generator=g, dtype=torch.float64), None
    y = x + 0.5 * torch.randn(2000, generator=g, dtype=torch.float64)
    est = [float(TorchCountSketch(2000, 64, h)(x) @ TorchCountSketch(2000, 64, h)(y))
           for h in range(400)]
    se = np.std(est) / np.sqrt(len(est))
    assert abs(np.mean(est) - float(x @ y)) < 4 * se


def test_registry_and_config():
    assert "sketch" in MODE_NAMES and get_mode("sketch") is SketchMode
    mode = SketchMode.from_config(_cfg({"mode": "sketch", "sketch_dim": 256,
                                        "sketch_sample_rate": 0.5}).record, seed=4)
    assert mode.dim == 256 and mode.rate == 0.5 and mode.keep(12345)
    with pytest.raises(ConfigError, match=r"^record\.sketch_dim: must be"):
        _cfg({"mode": "sketch", "sketch_dim": 0})
    with pytest.raises(ConfigError, match=r"^record\.sketch_sample_rate: must be"):
        _cfg({"mode": "sketch", "sketch_sample_rate": 0})


def test_sketch_dim_above_d_is_a_config_error_and_nothing_is_written(tmp_path, one_thread):
    with pytest.raises(ConfigError, match=r"^record\.sketch_dim: 5000 is more than the "
                                          r"model's 1546 parameters"):
        run(_cfg({"mode": "sketch", "sketch_dim": 5000}), tmp_path / "r", figures=False,
            progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sketched_run_against_store(tmp_path, one_thread):
    _, exact = run(_cfg({"mode": "store"}), tmp_path / "store", figures=False, progress=False)
    # sketch_check_steps 0: the rate alone (the default would check every step of 32)
    out, summary = run(_cfg({"mode": "sketch", "sketch_dim": 256, "sketch_sample_rate": 0.5,
                             "sketch_check_steps": 0}),
                       tmp_path / "sketch", figures=False, progress=False)
    want = pd.read_parquet(tmp_path / "store" / "metrics.parquet")
    got = pd.read_parquet(out / "metrics.parquet")
    assert got["step"].tolist() == want["step"].tolist()  # every step
    for col in ("b", "loss", "loss_star", "lr", "epoch"):
        assert np.array_equal(got[col], want[col]), col
    np.testing.assert_allclose(got["s"], want["s"], rtol=1e-13)  # exact, summed in torch
    # the check sample is exact: store's values bit for bit
    check = StepSampler(0.5, seed=0, stream=4).kept(summary.n_steps)
    assert np.flatnonzero(np.isfinite(got["a_exact"])).tolist() == check.tolist()
    assert np.array_equal(got["a_exact"].to_numpy()[check], want["a"].to_numpy()[check])
    assert np.array_equal(got["D_exact"].to_numpy()[check], want["D"].to_numpy()[check])
    # the sketch's estimates: close to the exact values, not equal (k = 256 of d = 1546)
    rel = np.abs(got["D"] - want["D"]) / want["D"]
    assert 0 < np.median(rel[:-1]) < 0.5
    err = summary.sketch_error
    assert err["n"] == len(check) and 0 < err["a_median_rel"] < 1 and 0 < err["D_median_rel"]
    assert summary.window == exact.window and summary.n_sampled_window is not None
    assert set(summary.gamma_hat_ci) == {"0.0", "0.05"} and len(summary.gamma_bar_ci) == 2
    # files: one float64 row of k a step (and x_T), s_t of every step
    sketches = TrajectoryStore(out / "trajectory" / SKETCHES)
    assert sketches.d == 256 and sketches.rows == summary.n_steps + 1
    assert (out / "trajectory" / S_FILE).stat().st_size == 8 * summary.n_steps
    meta = SampleStore(out / "trajectory").meta
    assert meta["sketch_dim"] == 256 and not meta["identity"]
    # re-analysis keeps the check columns and the self-check
    again = analyze(out, eps=[0.0, 0.1])
    per_step = ("a_median_rel", "D_median_rel", "n")
    assert {key: again.sketch_error[key] for key in per_step} == {key: err[key]
                                                                  for key in per_step}
    assert set(again.gamma_hat_ci) == {"0.0", "0.1"}
    # the gamma-level figure is the analysis' own: per eps > 0 of the analysis
    assert set(err["gamma_rel"]) == {"0.05"} and set(again.sketch_error["gamma_rel"]) == {"0.1"}
    assert err["n_window"] == summary.n_sampled_window


def test_a_model_no_larger_than_k_is_kept_exactly(tmp_path, one_thread):
    assert DEFAULT_DIM >= 1546
    run(_cfg({"mode": "store"}), tmp_path / "store", figures=False, progress=False)
    out, summary = run(_cfg({"mode": "sketch"}), tmp_path / "sketch", figures=False,
                       progress=False)
    want = pd.read_parquet(tmp_path / "store" / "metrics.parquet")
    got = pd.read_parquet(out / "metrics.parquet")
    assert SampleStore(out / "trajectory").meta["identity"]
    assert TrajectoryStore(out / "trajectory" / SKETCHES).meta["dtype"] == "<f4"  # as store
    for col in ("a", "D", "b"):  # S = I: the same arithmetic on the same rows
        assert np.array_equal(got[col], want[col]), col
    assert summary.sketch_error["a_median_rel"] == 0.0


def test_rows_staged_on_the_device_are_the_same(tmp_path, one_thread):
    """The accelerator path (sketches staged 64 rows at a time) forced on the CPU."""
    torch.manual_seed(0)
    model = torch.nn.Linear(50, 20)
    files = {}
    for stage in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(50, 20)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mode = SketchMode(dim=128, check_rate=0.3, seed=1, stage=stage)
        rec = Recorder(opt, tmp_path / str(stage), mode=mode)
        for _ in range(150):
            loss = model(torch.randn(8, 50)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        rec.close()
        store = TrajectoryStore(tmp_path / str(stage) / SKETCHES)
        files[stage] = (np.stack([store.row(t) for t in range(store.rows)]), store.lrs,
                        (tmp_path / str(stage) / S_FILE).read_bytes())
    assert files[True][0].shape == (151, 128)
    for a, b in zip(files[False], files[True], strict=True):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def test_session_in_sketch_mode(tmp_path, one_thread):
    from tests.record.test_sample_mode import _plain_loop

    out = tmp_path / "run"
    mode = SketchMode(dim=256, check_rate=0.3, seed=2)
    summary, xs, _, _, _ = _plain_loop(out, mode, warns=False)
    T = len(xs) - 1
    table = pd.read_parquet(out / "metrics.parquet")
    assert table["step"].tolist() == list(range(T))
    kept = json.loads((out / "batches" / "index.json").read_text())["records"]
    assert len(kept) == T  # every micro-batch: b_t everywhere
    check = StepSampler(0.3, seed=2, stream=4).kept(T)
    # l_t(x_t) is rebuilt (and checked) wherever x_t is stored: the check steps and their
    # successors, x_0 and x_{T-1}; elsewhere it is the loss the loop computed
    stored = [t for t in SampleStore(out / "trajectory").iterates if t < T]
    assert summary.loss_check["steps"] == summary.loss_check["equal"] == len(stored)
    assert set(check) <= set(stored)
    assert np.isfinite(table["b"]).all() and summary.sketch_error["n"] == len(check)


@pytest.mark.slow
def test_gamma_hat_within_10_percent_of_store(tmp_path, one_thread):
    """The demo MLP (d = 22090 > k): the default k's gamma_hat(0.05) against store's. (At
    the default the mode keeps this model exactly, d <= 2 k: k is given to hash it.)"""
    cfg = {"data": {"subset": None}, "model": {"depth": 6, "width": 64}, "train": {"epochs": 15}}
    _, exact = run(_cfg({"mode": "store"}, **cfg), tmp_path / "store", figures=False,
                   progress=False)
    _, sketched = run(_cfg({"mode": "sketch", "sketch_dim": DEFAULT_DIM}, **cfg),
                      tmp_path / "sketch", figures=False, progress=False)
    g, want = sketched.gamma_hat["0.05"], exact.gamma_hat["0.05"]
    assert abs(g / want - 1) <= 0.10, (g, want)
    assert sketched.sketch_error["a_median_rel"] < 0.1
