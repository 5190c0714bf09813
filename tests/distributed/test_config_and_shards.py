"""Distributed runs without processes: the config, --nproc, failure messages, and the
sharded trajectory's measurement (sums of per-rank partial sums) against store mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import tiny
from trajreg.distributed import launch, shards
from trajreg.distributed.launch import describe_failure, with_nproc
from trajreg.errors import ConfigError, DamagedRun
from trajreg.record.modes.store import stream_quantities
from trajreg.record.recorder import local_part
from trajreg.record.store import TrajectoryStore, TrajectoryWriter
from trajreg.train.config import load_config


def _dist(**kw) -> dict:
    return tiny(train={"epochs": 1, "distributed": kw}, data={"batch_size": 64})


def test_distributed_section_is_optional_and_round_trips():
    plain = load_config(tiny())
    assert plain.train.distributed is None
    assert "distributed" not in plain.to_dict()["train"]  # run ids of plain runs unchanged
    cfg = load_config(_dist(strategy="fsdp", nproc=4))
    assert (cfg.train.distributed.strategy, cfg.train.distributed.nproc,
            cfg.train.distributed.backend) == ("fsdp", 4, "gloo")
    again = load_config(cfg.to_dict())
    assert again.train.distributed == cfg.train.distributed


@pytest.mark.parametrize("section, message", [
    ({"nproc": 3}, "data.batch_size: 64 is not divisible by train.distributed.nproc 3"),
    ({"strategy": "zero"}, "train.distributed.strategy: unknown value 'zero'"),
    ({"backend": "mpi"}, "train.distributed.backend: unknown value 'mpi'"),
    ({"nproc": 0}, "train.distributed.nproc: must be > 0"),
    ({"backend": "nccl"}, "train.distributed.backend: nccl needs train.device cuda"),
])
def test_bad_distributed_sections_are_one_line_errors(section, message):
    with pytest.raises(ConfigError) as info:
        load_config(_dist(**section))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_replay_refused_and_fsdp_modes():
    with pytest.raises(ConfigError, match="replay cannot measure a distributed run"):
        load_config(tiny(train={"distributed": {}}, record={"mode": "replay"}))
    for mode in ("store", "sample", "sketch", "off"):  # every mode but replay
        load_config(tiny(train={"distributed": {"strategy": "fsdp"}}, record={"mode": mode}))
    load_config(tiny(train={"distributed": {}}, record={"mode": "sample"}))  # ddp: any


def test_nproc_override():
    cfg = with_nproc(load_config(tiny()), 4)
    assert cfg.train.distributed.strategy == "ddp" and cfg.train.distributed.nproc == 4
    cfg = with_nproc(load_config(_dist(strategy="fsdp")), 1)
    assert (cfg.train.distributed.strategy, cfg.train.distributed.nproc) == ("fsdp", 1)
    with pytest.raises(ConfigError, match="not divisible"):
        with_nproc(load_config(tiny()), 5)


def test_run_dispatches_on_the_distributed_section(monkeypatch, tmp_path):
    """``trajreg.run`` (``launch.run``) trains a plain config in this process and launches
    a distributed one (after the disk check ``runner.run`` makes); ``runner.run``, a
    layer below ``trajreg.distributed``, refuses a distributed config."""
    from trajreg.run import runner

    calls = []
    monkeypatch.setattr(runner, "run", lambda cfg, out, **kw: calls.append(("here", kw)))
    monkeypatch.setattr(launch, "check_run_disk", lambda cfg, out: calls.append(("disk", {})))
    monkeypatch.setattr(launch, "run_distributed",
                        lambda cfg, out, **kw: calls.append(("ranks", kw)))
    launch.run(load_config(tiny()), tmp_path / "a", figures=False, on_epoch=print)
    launch.run(load_config(_dist()), tmp_path / "b", progress=False, tensorboard=True)
    assert calls == [("here", {"figures": False, "progress": None, "on_epoch": print,
                               "tensorboard": False}),
                     ("disk", {}),
                     ("ranks", {"figures": True, "progress": False, "tensorboard": True})]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="train.distributed runs through trajreg.run"):
        runner.run(load_config(_dist()), tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_cli_nproc_argument():
    from trajreg.cli import parser

    assert parser().parse_args(["run", "c.yaml", "--nproc", "2"]).nproc == 2
    assert parser().parse_args(["run", "c.yaml"]).nproc is None
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "c.yaml", "--nproc", "0"])


def test_failure_message_names_the_rank(tmp_path):
    killed = {"1": {"exitcode": -9, "signal": "SIGKILL", "pid": 42, "timestamp": 5},
              "0": {"exitcode": 1, "signal": "", "pid": 41, "timestamp": 5}}
    (tmp_path / "rank-0.error").write_text("RuntimeError: Connection closed by peer\n")
    message = describe_failure(killed, tmp_path, 1)
    assert message.startswith("distributed run failed: rank 1 (pid 42) was killed by SIGKILL")
    assert "rank 0 failed too" in message and "\n" not in message
    (tmp_path / "rank-1.error").write_text("ConfigError: bad\n")
    failed = {"1": {"exitcode": 2, "signal": "", "pid": 42, "timestamp": 3}}
    assert "rank 1 (pid 42) exited with status 2: ConfigError: bad" in describe_failure(
        failed, tmp_path, 1)
    assert "status 7" in describe_failure({}, tmp_path, 7)
    # a rank that raised, then the agent stopped the other with SIGTERM: the one that raised
    (tmp_path / "rank-1.error").unlink()
    (tmp_path / "rank-0.error").write_text("ConfigError: analysis.reference: bad\n")
    stopped = {"1": {"exitcode": -15, "signal": "SIGTERM", "pid": 42, "timestamp": 5},
               "0": {"exitcode": 2, "signal": "", "pid": 41, "timestamp": 5}}
    assert describe_failure(stopped, tmp_path, 1).startswith(
        "distributed run failed: rank 0 (pid 41) exited with status 2: ConfigError")
    # two ranks raised: the first error line written names the rank
    import os
    (tmp_path / "rank-1.error").write_text("ValueError: first\n")
    os.utime(tmp_path / "rank-1.error", ns=(1, 1))
    both = {"0": {"exitcode": 1, "pid": 41, "timestamp": 5},
            "1": {"exitcode": 1, "pid": 42, "timestamp": 5}}
    assert "rank 1 (pid 42) exited with status 1: ValueError: first" in describe_failure(
        both, tmp_path, 1)


def test_local_part_of_plain_and_sharded_parameters():
    p = torch.zeros(3, 4)
    assert local_part(p) is p

    class Sharded:  # what the recorder asks of a DTensor
        def to_local(self):
            return p[:1]

    assert local_part(Sharded()).shape == (1, 4)


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
    sharded = shards.ShardedTrajectory(traj)
    sharded.verify(n_steps=T)
    store = TrajectoryStore(whole)
    for k in (T, 7):
        D, a, s, lr = sharded.quantities(T, k)
        D1, a1, s1, lr1 = stream_quantities(store, T, store.row(k).astype(np.float64))
        np.testing.assert_allclose(D, D1, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(a, a1, rtol=1e-13, atol=1e-11)
        np.testing.assert_allclose(s, s1, rtol=1e-13)
        np.testing.assert_array_equal(lr, lr1)
        np.testing.assert_array_equal(sharded.row(k), store.row(k))


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
        shards.ShardedTrajectory(traj).verify(5)
    x = traj / shards.shard_dir(1) / "x-0000.npy"
    offset = np.load(x, mmap_mode="r").offset
    data = bytearray(x.read_bytes())
    data[offset + 2] ^= 0xFF  # inside row 0
    x.write_bytes(bytes(data))
    with pytest.raises(DamagedRun, match="checksum mismatch"):
        shards.ShardedTrajectory(traj).verify(2)


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


class _FakeContext:
    def __init__(self, directory, steps):
        self.directory, self.steps, self.loaded = directory, steps, None

    def load(self, x):
        self.loaded = np.array(x)

    def step_losses(self, steps):
        return np.zeros(len(steps))

    def f_star(self, k):
        return 0.0


def _record(mode, xs, lrs, cols, directory, gs=None):
    rec = _FakeRecorder(xs, cols, gs)
    mode.open(rec, directory)
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
    _record_shards(lambda rr: SampleMode(rate=0.1, seed=3), xs, gs, lrs, d,
                   [[[0, 4], [9, 6]], [[4, 5], [15, 8]]], split / "trajectory")
    one = SampleMode(rate=0.1, seed=3).measure(ctx_one := _FakeContext(whole, T), T)
    two = shards.ShardedSampleMode.from_config(None, 0).measure(
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
    (``make_mode(ranges)``), and the index, as the FSDP2 worker does."""
    entries = []
    for rank, rr in enumerate(ranges):
        cols = np.concatenate([np.arange(s, s + n) for s, n in rr])
        _record(make_mode(rr), xs, lrs, cols, traj / shards.shard_dir(rank), gs)
        entries.append({"rank": rank, "dir": shards.shard_dir(rank), "d": len(cols),
                        "ranges": rr})
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
    _record_shards(lambda rr: shards.ShardedSketchMode(dim=k, check_rate=0.1, seed=3).shard(
        rr, d), xs, gs, lrs, d, ranges, split / "trajectory")
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
    two = shards.ShardedSketchMode(dim=k, check_rate=0.1, seed=3).measure(
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
    mode = shards.ShardedSketchMode(dim=8, seed=1).shard([[0, 5]], 10)  # d_r 5 < 8 < d
    _record(mode, xs, lrs, np.arange(5), tmp_path / "ok", gs)
    assert mode.k == 8 and not mode.identity
    with pytest.raises(ConfigError, match="sketch_dim: 11 is more than the model's 10"):
        _record(shards.ShardedSketchMode(dim=11).shard([[0, 5]], 10), xs, lrs, np.arange(5),
                tmp_path / "bad", gs)
