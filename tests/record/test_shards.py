"""A trajectory recorded in shards (trajreg.record.shards): the index, and each record
mode's measurement of per-rank parts (sums of per-rank partial sums) against the same
mode's measurement of the whole vector."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trajreg.errors import ConfigError, DamagedRun
from trajreg.record import shards
from trajreg.record.modes.store import StoreMode, stream_quantities
from trajreg.record.store import TrajectoryStore, TrajectoryWriter


def _split_store(tmp_path, xs, lrs, ranges_by_rank):
    """Write the trajectory xs as per-rank shard stores plus shards.json."""
    traj = tmp_path / "trajectory"
    entries = []
    for rank, ranges in enumerate(ranges_by_rank):
        cols = np.concatenate([np.arange(s, s + n) for s, n in ranges])
        w = TrajectoryWriter(traj / shards.shard_dir(rank), len(cols), np.float32, capacity=7)
        for t, x in enumerate(xs):
            w.next_row()[:] = x[cols]
            w.commit_row(lrs[t] if t < len(lrs) else None)
        w.close()
        entries.append({"rank": rank, "dir": shards.shard_dir(rank), "d": len(cols),
                        "ranges": [list(r) for r in ranges]})
    shards.write_index(traj, xs.shape[1], entries)
    return traj


def test_sharded_quantities_equal_the_whole_stores(tmp_path):
    rng = np.random.default_rng(0)
    T, d = 20, 37
    xs = np.cumsum(rng.normal(size=(T + 1, d)), axis=0).astype(np.float32)
    lrs = rng.uniform(0.01, 0.1, T)
    whole = tmp_path / "whole"
    w = TrajectoryWriter(whole, d, np.float32, capacity=7)
    for t, x in enumerate(xs):
        w.next_row()[:] = x
        w.commit_row(lrs[t] if t < T else None)
    w.close()
    # FSDP-like: each rank a chunk of every "parameter" (interleaved runs of the index)
    traj = _split_store(tmp_path, xs, lrs, [[(0, 5), (10, 3), (20, 9)],
                                            [(5, 5), (13, 7), (29, 8)]])
    StoreMode.verify(traj, T)
    store = TrajectoryStore(whole)
    for k in (T, 7):
        got = StoreMode().measure(_FakeContext(tmp_path, T), k)  # tmp_path/trajectory
        D1, a1, s1, lr1 = stream_quantities(store, T, store.row(k).astype(np.float64))
        np.testing.assert_allclose(got.D, D1, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(got.a, a1, rtol=1e-13, atol=1e-11)
        np.testing.assert_allclose(got.s, s1, rtol=1e-13)
        np.testing.assert_array_equal(got.lr, lr1)
        np.testing.assert_array_equal(StoreMode.rows(traj)(k), store.row(k))


def test_sharded_index_and_stores_are_checked(tmp_path):
    xs = np.arange(12, dtype=np.float32).reshape(3, 4)
    traj = _split_store(tmp_path, xs, [0.1, 0.1], [[(0, 2)], [(2, 2)]])
    meta = json.loads((traj / shards.SHARDS).read_text())
    with pytest.raises(DamagedRun, match="do not cover"):
        shards.check_index({**meta, "d": 5}, traj / shards.SHARDS)
    bad = json.loads(json.dumps(meta))
    bad["shards"][1]["ranges"] = [[1, 2]]
    with pytest.raises(DamagedRun, match="do not cover"):
        shards.check_index(bad, traj / shards.SHARDS)
    with pytest.raises(DamagedRun, match="holds 3 iterates, the run took 5"):
        StoreMode.verify(traj, 5)
    x = traj / shards.shard_dir(1) / "x-0000.npy"
    offset = np.load(x, mmap_mode="r").offset
    data = bytearray(x.read_bytes())
    data[offset + 2] ^= 0xFF  # inside row 0
    x.write_bytes(bytes(data))
    with pytest.raises(DamagedRun, match="checksum mismatch"):
        StoreMode.verify(traj, 2)


class _FakeRecorder:
    """What a record mode asks of the recorder, over a given trajectory's columns (and
    its gradients' columns; none: zeros)."""

    def __init__(self, xs: np.ndarray, cols: np.ndarray, gs: np.ndarray | None = None) -> None:
        self.xs, self.cols = torch.from_numpy(xs[:, cols].copy()), cols
        self.gs = None if gs is None else torch.from_numpy(gs[:, cols].copy())
        self.d, self.dtype = len(cols), torch.float32
        self.params = [self.xs]
        self.steps = 0

    def flat(self, out=None):
        row = self.xs[self.steps]
        return row.clone() if out is None else out.copy_(row)

    def grad_flat(self, out=None):  # g_t (record.gradients)
        g = torch.zeros(self.d) if self.gs is None else self.gs[self.steps]
        return g.clone() if out is None else out.copy_(g)


class _FakeContext:  # a MeasureContext without the interpolation (mli False)
    mli = False

    def __init__(self, directory, steps):
        self.directory, self.steps, self.loaded = directory, steps, None

    def load(self, x):
        self.loaded = np.array(x)

    def step_losses(self, steps):
        return np.zeros(len(steps))

    def f_star(self, k):
        return 0.0

    def replay(self, k):
        raise AssertionError("not replayed")

    def interpolated_losses(self, alphas, x0, x_star):
        raise AssertionError("mli is False")


def _record(mode, xs, lrs, cols, directory, gs=None, shard=None):
    rec = _FakeRecorder(xs, cols, gs)
    mode.open(rec, directory, shard=shard)
    for t, lr in enumerate(lrs):
        rec.steps = t
        mode.pre_step(rec, t, lr)
    rec.steps = len(lrs)
    mode.close(rec)


def test_sharded_sample_measures_what_the_whole_sample_measures(tmp_path):
    from trajreg.record.modes.sample import SampleMode

    rng = np.random.default_rng(1)
    T, d = 200, 23
    xs, gs, lrs = _trajectory(rng, T, d)
    whole, split = tmp_path / "whole", tmp_path / "split"
    _record(SampleMode(rate=0.1, seed=3), xs, lrs, np.arange(d), whole / "trajectory", gs)
    _record_shards(lambda: SampleMode(rate=0.1, seed=3), xs, gs, lrs, d,
                   [[[0, 4], [9, 6]], [[4, 5], [15, 8]]], split / "trajectory")
    one = SampleMode(rate=0.1, seed=3).measure(ctx_one := _FakeContext(whole, T), T)
    two = SampleMode.from_config(None, 0).measure(
        ctx_two := _FakeContext(split, T), T)
    assert len(one.steps) > 5
    np.testing.assert_array_equal(two.steps, one.steps)
    for name in ("D", "a", "s"):
        np.testing.assert_allclose(getattr(two, name), getattr(one, name), rtol=1e-12,
                                   atol=1e-12, err_msg=name)
    # with gradients: g_dot and g_norm2 are sums of per-rank partial sums as D is
    assert set(two.columns) == set(one.columns) == {"g_dot", "g_norm2"}
    for name, value in one.columns.items():
        np.testing.assert_allclose(two.columns[name], value, rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    # the path length: ||u_t||^2 summed over ranks before the square root
    assert set(two.summary) == {"path_ratio"}  # no interpolation without a real context
    assert math.isclose(two.summary["path_ratio"], one.summary["path_ratio"], rel_tol=1e-12)
    assert two.summary["path_ratio"] > 1.5  # a random walk: far from straight
    np.testing.assert_array_equal(ctx_two.loaded, ctx_one.loaded)


def _trajectory(rng, T, d):
    """A random walk x_0..x_T (float32), gradients g_0..g_{T-1}, learning rates."""
    xs = np.cumsum(rng.normal(size=(T + 1, d)), axis=0).astype(np.float32)
    gs = rng.normal(size=(T, d)).astype(np.float32)
    return xs, gs, rng.uniform(0.01, 0.1, T)


def _record_shards(make_mode, xs, gs, lrs, d, ranges, traj):
    """Each rank's entries (``ranges``) recorded into ``traj/rank-N`` by its own mode
    (``make_mode()``) given its ``Shard``, and the index, as the FSDP2 worker does."""
    entries = []
    for rank, rr in enumerate(ranges):
        cols = np.concatenate([np.arange(s, s + n) for s, n in rr])
        shard = shards.Shard(rank, len(ranges), tuple((s, n) for s, n in rr), d)
        _record(make_mode(), xs, lrs, cols, traj / shard.dir, gs, shard=shard)
        entries.append(shard.entry())
    shards.write_index(traj, d, entries)


@pytest.mark.parametrize("k", [16, None])  # d_r < k < d: still sketched; d <= 8192: S = I
def test_sharded_sketch_sums_to_the_whole_sketch(tmp_path, k):
    """Every rank sketches its entries by their global flat index: the ranks' sketch
    rows add up to the whole vector's (float64 addition order apart), and the sharded
    measurement equals the whole sketch run's, the check sample's and the gradients'
    columns, the path ratio included."""
    from trajreg.record.modes.sketch import GRAD_SKETCHES, SKETCHES, SketchMode

    rng = np.random.default_rng(2)
    T, d = 120, 41
    xs, gs, lrs = _trajectory(rng, T, d)
    ranges = [[[0, 7], [14, 5], [24, 9]], [[7, 7], [19, 5], [33, 8]]]  # d_r = 21, 20
    whole, split = tmp_path / "whole", tmp_path / "split"
    _record(SketchMode(dim=k, check_rate=0.1, seed=3), xs, lrs, np.arange(d),
            whole / "trajectory", gs)
    _record_shards(lambda: SketchMode(dim=k, check_rate=0.1, seed=3), xs, gs, lrs, d, ranges,
                   split / "trajectory")
    index = shards.read_index(split / "trajectory")
    for name in (SKETCHES, GRAD_SKETCHES):
        one = TrajectoryStore(whole / "trajectory" / name)
        two = shards.CombinedRows(index, [TrajectoryStore(split / "trajectory" / s["dir"] / name)
                                          for s in index["shards"]], assemble=k is None)
        assert one.d == two.d == (k or d)
        assert all(TrajectoryStore(split / "trajectory" / s["dir"] / name).d == (k or s["d"])
                   for s in index["shards"])
        np.testing.assert_allclose(two.read(0, one.rows), one.read(0, one.rows), rtol=1e-12,
                                   atol=1e-12 * np.abs(one.read(0, one.rows)).max())
    one = SketchMode(dim=k, check_rate=0.1, seed=3).measure(ctx_one := _FakeContext(whole, T), T)
    two = SketchMode(dim=k, check_rate=0.1, seed=3).measure(
        ctx_two := _FakeContext(split, T), T)
    np.testing.assert_array_equal(two.steps, one.steps)
    for name in ("D", "a", "s", "lr"):
        np.testing.assert_allclose(getattr(two, name), getattr(one, name), rtol=1e-11,
                                   atol=1e-11, err_msg=name)
    assert set(two.columns) == set(one.columns) == {"a_exact", "D_exact", "g_dot", "g_norm2",
                                                    "g_dot_exact"}
    for name, value in one.columns.items():
        assert np.isfinite(value).sum() > 5, name  # the check sample holds steps
        np.testing.assert_array_equal(np.isfinite(two.columns[name]), np.isfinite(value))
        np.testing.assert_allclose(two.columns[name], value, rtol=1e-11, atol=1e-11,
                                   err_msg=name)
    if k is None:  # S = I: the "sketched" D_t is exact
        np.testing.assert_allclose(one.D[np.isfinite(one.columns["D_exact"])],
                                   one.columns["D_exact"][np.isfinite(one.columns["D_exact"])],
                                   rtol=1e-12)
    assert math.isclose(two.summary["path_ratio"], one.summary["path_ratio"], rel_tol=1e-12)
    np.testing.assert_array_equal(ctx_two.loaded, ctx_one.loaded)


def test_sharded_sketch_dim_is_checked_on_the_whole_vector(tmp_path):
    xs, gs, lrs = _trajectory(np.random.default_rng(3), 4, 10)
    from trajreg.record.modes.sketch import SketchMode

    shard = shards.Shard(0, 2, ((0, 5),), 10)
    mode = SketchMode(dim=8, seed=1)  # d_r 5 < 8 < d
    _record(mode, xs, lrs, np.arange(5), tmp_path / "ok", gs, shard=shard)
    assert mode.k == 8 and not mode.identity
    with pytest.raises(ConfigError, match="sketch_dim: 11 is more than the model's 10"):
        _record(SketchMode(dim=11), xs, lrs, np.arange(5), tmp_path / "bad", gs, shard=shard)
