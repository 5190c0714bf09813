"""Distributed runs on 2 CPU processes (gloo), end to end: DDP and FSDP2 measure what one
process measures, the run directory is an ordinary one, shards are 1/N of the disk, a
killed rank leaves nothing finished-looking, and the ranks exit cleanly.

Tolerance. The three runs take the same global batches from the same init, but the
gradient of a global batch is a sum in another order (two half-batch means averaged
by the backend, against one mean), so the float32 iterates differ by rounding from
the first step on, and the differences grow slowly along the trajectory. Over these
192 steps l_t, l_t(x*), D_t, a_t, s_t differ by at most about 1e-6 relative (measured);
the tests allow RTOL = 1e-4. b_t = l_t(x_t) - l_t(x*) is a difference of two nearby
losses, so its error is the losses' rounding, not a fraction of b_t: it is compared
with an absolute tolerance of 1e-4 times the largest |b_t|. The same holds for the
gradients' g_dot_t = <g_t, x_t - x*> (compared with 1e-4 times the largest |g_dot_t|) and
for the sketch runs' estimates, which are computed from sketch rows that differ from the
single process's by the same float32 drift (and by the order of float64 additions: the
ranks' sketches are summed).

The interpolation from x_0 to x* (``mli``) is evaluated by rank 0 as the ranks evaluated
F_k (``trajreg.distributed.measure``), so its ends equal the run's own F_0 and F(x*) bit
for bit.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trajreg.distributed.launch import launch, run
from trajreg.record import shards
from trajreg.record.modes.store import StoreMode
from trajreg.record.recorder import flat_params
from trajreg.run import rundir, runner
from trajreg.train.config import load_config

pytestmark = pytest.mark.slow

RTOL = 1e-4
B_ATOL = 1e-4  # times max |b_t|
STEPS = 192  # 12 epochs of 16 steps

BASE = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 32, "subset": 512},
    "model": {"name": "mlp", "depth": 3, "width": 16, "norm": "none"},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 12, "threads": 1},
    "record": {"mode": "store", "gradients": True},
}
# d = 1482, d_r = 741 or so: 741 < k = 1024 < d, so every rank sketches (S != I) its shard
SKETCH = {"mode": "sketch", "sketch_dim": 1024, "sketch_sample_rate": 0.1}


def _config(strategy: str | None = None, record: dict | None = None, **train):
    raw = json.loads(json.dumps(BASE))
    raw["train"].update(train)
    if record is not None:
        raw["record"] = record
    if strategy is not None:
        raw["train"]["distributed"] = {"strategy": strategy, "nproc": 2, "backend": "gloo"}
    return load_config(raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run in one process, under DDP and under FSDP2 (store mode, with
    gradients), and in sketch mode in one process and under FSDP2."""
    root = tmp_path_factory.mktemp("dist")

    def one(name: str):
        strategy = name.removesuffix("-sketch")
        path, summary = run(
            _config(None if strategy == "single" else strategy,
                    SKETCH if name.endswith("-sketch") else None),
            root / name, figures=False, progress=False)
        return {name: (path, summary)}

    def in_process() -> dict:  # one after the other: they share torch's global RNG
        return {**one("single"), **one("single-sketch")}

    runs: dict = {}
    with ThreadPoolExecutor(4) as pool:  # the launches overlap, each in its processes
        jobs = [pool.submit(one, name) for name in ("ddp", "fsdp", "fsdp-sketch")]
        jobs.append(pool.submit(in_process))
        for job in jobs:
            runs.update(job.result())
    return runs


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distributed_run_measures_what_one_process_measures(runs, strategy):
    single = pd.read_parquet(runs["single"][0] / rundir.METRICS)
    dist = pd.read_parquet(runs[strategy][0] / rundir.METRICS)
    assert len(single) == len(dist) == STEPS
    np.testing.assert_array_equal(dist["step"], single["step"])
    np.testing.assert_array_equal(dist["lr"], single["lr"])
    for column in ("loss", "loss_star", "D", "a", "s"):
        np.testing.assert_allclose(dist[column], single[column], rtol=RTOL, err_msg=column)
    b = single["b"].to_numpy()
    np.testing.assert_allclose(dist["b"], b, rtol=0, atol=B_ATOL * np.abs(b).max())
    # the identity D_t - D_{t+1} = 2 eta a_t - eta^2 s_t holds on the distributed run
    D, a, s, eta = (dist[c].to_numpy() for c in ("D", "a", "s", "lr"))
    D_next = np.append(D[1:], 0.0)  # x* = x_T: D_T = 0
    residual = (D - D_next) - (2 * eta * a - eta**2 * s)
    assert np.abs(residual).max() <= 1e-9 * D.max()
    one, other = runs["single"][1], runs[strategy][1]
    assert one.window == other.window
    for key, value in one.gamma_hat.items():
        assert math.isclose(other.gamma_hat[key], value, rel_tol=1e-3), key
    assert math.isclose(other.gamma_bar, one.gamma_bar, rel_tol=1e-3)
    # the gradients (record.gradients): g_dot and g_norm2 are sums of per-rank partial
    # sums under FSDP2, rank 0's whole vectors under DDP
    for column in ("g_norm2", "rsi", "eb", "cos_g", "cos_v"):
        np.testing.assert_allclose(dist[column], single[column], rtol=RTOL, err_msg=column)
    g = single["g_dot"].to_numpy()
    np.testing.assert_allclose(dist["g_dot"], g, rtol=0, atol=RTOL * np.abs(g).max())
    for key in ("mu_hat", "L_hat"):
        for eps, value in getattr(one, key).items():
            assert math.isclose(getattr(other, key)[eps], value, rel_tol=1e-3), (key, eps)
    assert math.isclose(other.cos_g_positive, one.cos_g_positive, abs_tol=0.02)
    _same_path_and_interpolation(one, other)


def _same_path_and_interpolation(one, other):
    """path_ratio (||u_t||^2 summed over ranks before the square root) and the
    interpolation agree with the single-process run's; the interpolation's ends are the
    distributed run's own F_0 and F(x*), bit for bit."""
    assert other.path_ratio > 1.0
    assert math.isclose(other.path_ratio, one.path_ratio, rel_tol=RTOL)
    assert other.mli["alpha"] == one.mli["alpha"] and len(other.mli["loss"]) == 21
    np.testing.assert_allclose(other.mli["loss"], one.mli["loss"], rtol=RTOL)
    assert other.mli["loss"][0] == other.full_loss[0]
    assert other.mli["loss"][-1] == other.full_loss[-1] == other.f_star
    assert other.mli["monotone"] == one.mli["monotone"]


def test_fsdp_sketch_run_measures_what_the_single_process_sketch_measures(runs):
    """Every rank sketches its shard by global flat index; rank 0 sums the ranks' sketch
    rows, their s_t, ||g_t||^2 and check-sample partial sums after training."""
    single = pd.read_parquet(runs["single-sketch"][0] / rundir.METRICS)
    dist = pd.read_parquet(runs["fsdp-sketch"][0] / rundir.METRICS)
    assert len(single) == len(dist) == STEPS
    np.testing.assert_array_equal(dist["lr"], single["lr"])
    for column in ("D", "s", "g_norm2", "loss", "loss_star"):
        np.testing.assert_allclose(dist[column], single[column], rtol=RTOL, err_msg=column)
    for column in ("a", "g_dot", "b"):  # estimates (a, g_dot) and a difference (b) near 0
        ref = single[column].to_numpy()
        np.testing.assert_allclose(dist[column], ref, rtol=0, atol=RTOL * np.abs(ref).max(),
                                   err_msg=column)
    for column in ("a_exact", "D_exact", "g_dot_exact"):  # the exact check sample
        ref = single[column].to_numpy()
        np.testing.assert_array_equal(np.isfinite(dist[column]), np.isfinite(ref))
        assert np.isfinite(ref).sum() >= 5, column
        np.testing.assert_allclose(dist[column], ref, rtol=0,
                                   atol=RTOL * np.nanmax(np.abs(ref)), err_msg=column)
    one, other = runs["single-sketch"][1], runs["fsdp-sketch"][1]
    assert other.sketch_error["n"] == one.sketch_error["n"] >= 5
    for key in ("a_median_rel", "D_median_rel"):  # the sketch's own error, not the drift
        assert 0 < other.sketch_error[key] < 0.5
        assert math.isclose(other.sketch_error[key], one.sketch_error[key], rel_tol=1e-2)
    for key, value in one.gamma_hat.items():
        assert math.isclose(other.gamma_hat[key], value, rel_tol=1e-3), key
    _same_path_and_interpolation(one, other)
    index = json.loads((runs["fsdp-sketch"][0] / "trajectory" / shards.SHARDS).read_text())
    for shard in index["shards"]:  # every rank's sketch rows are k wide, its check rows d_r
        rank_dir = runs["fsdp-sketch"][0] / "trajectory" / shard["dir"]
        assert np.load(rank_dir / "sketch" / "x-0000.npy", mmap_mode="r").shape == (
            STEPS + 1, SKETCH["sketch_dim"])
        assert json.loads((rank_dir / "sample.json").read_text())["d"] == shard["d"] < 1024


def test_ddp_and_fsdp_agree_with_each_other(runs):
    """Both reduce the same two half-batch gradients: their runs agree far more closely
    than either agrees with one process."""
    ddp = pd.read_parquet(runs["ddp"][0] / rundir.METRICS)
    fsdp = pd.read_parquet(runs["fsdp"][0] / rundir.METRICS)
    for column in ("loss", "D", "a", "s", "b"):
        np.testing.assert_allclose(fsdp[column], ddp[column], rtol=1e-9, atol=1e-12,
                                   err_msg=column)


def test_ddp_run_directory_is_ordinary_and_reanalysed(runs):
    path = runs["ddp"][0]
    assert sorted(p.name for p in path.iterdir()) == [
        "checksums.json", "config.yaml", "final_state.pt", "metrics.parquet", "summary.json",
        "trajectory"]
    rundir.verify_run_dir(path)
    assert rundir.read_config(path).run.train.distributed.strategy == "ddp"
    summary = runner.analyze(path, eps=[0.0, 0.1], progress=False)
    assert set(summary.gamma_hat) == {"0.0", "0.1"}
    assert summary.gamma_hat["0.0"] == runs["ddp"][1].gamma_hat["0.0"]


def test_fsdp_shards_hold_one_nth_of_the_trajectory_each(runs):
    path = runs["fsdp"][0]
    index = json.loads((path / "trajectory" / shards.SHARDS).read_text())
    d = index["d"]
    assert d == runs["single"][1].n_params and index["world"] == 2
    widths = [s["d"] for s in index["shards"]]
    assert sum(widths) == d
    single_x = runs["single"][0] / "trajectory" / "x-0000.npy"
    for shard in index["shards"]:
        x = path / "trajectory" / shard["dir"] / "x-0000.npy"
        rows = np.load(x, mmap_mode="r")
        # the recorder's rows (and so its RAM buffers) are d_r wide, never d
        assert rows.shape == (STEPS + 1, shard["d"]) and rows.dtype == np.float32
        assert abs(shard["d"] - d / 2) <= 0.05 * d
        assert x.stat().st_size == rows.offset + (STEPS + 1) * shard["d"] * 4
        assert x.stat().st_size < 0.55 * single_x.stat().st_size
        grads = np.load(x.parent / "grad" / "x-0000.npy", mmap_mode="r")  # g_t: d_r wide too
        assert grads.shape[1] == shard["d"]
    assert not (path / "trajectory" / "x-0000.npy").exists()
    StoreMode.verify(path / "trajectory", STEPS)
    whole = StoreMode.rows(path / "trajectory")(STEPS)
    final = flat_params(list(rundir.read_final_state(path).values()))  # no buffers
    np.testing.assert_array_equal(whole, final.numpy())


def test_fsdp_run_reanalysed_by_trajreg_analyze(runs):
    summary = runner.analyze(runs["fsdp"][0], eps=[0.0, 0.1], progress=False)
    assert summary.gamma_hat["0.0"] == runs["fsdp"][1].gamma_hat["0.0"]


def test_store_mode_measures_a_sharded_trajectory(runs):
    """What ``trajreg analyze --reference best`` runs when best is not final."""
    from trajreg.record.modes.store import StoreMode
    from trajreg.train.data import load_data
    from trajreg.train.loop import build

    path = runs["fsdp"][0]
    cfg = rundir.read_config(path).run
    data = load_data(cfg.data)
    model, _, _ = build(cfg, data)
    state = rundir.read_final_state(path)
    model.load_state_dict(state)
    log = runner._log_from_run(path, rundir.read_metrics(path), rundir.read_summary(path))
    ctx = runner.RunContext(cfg, data, log, model, state, path, progress=False)
    measured = StoreMode().measure(ctx, STEPS)
    table = rundir.read_metrics(path)
    for column in ("D", "a", "s", "loss_star"):
        np.testing.assert_array_equal(getattr(measured, column), table[column], column)


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the worker process of rank ``rank`` whose command line holds
    ``marker`` (this test's own run directory)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "trajreg.distributed.worker" not in cmd or marker not in cmd:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_killed_rank_fails_the_run_and_names_the_rank(tmp_path):
    config = tmp_path / "long.yaml"
    raw = json.loads(json.dumps(BASE))
    raw["train"].update(epochs=400, distributed={"strategy": "ddp", "nproc": 2})
    config.write_text(json.dumps(raw))
    out = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "trajreg.cli", "run", str(config), "--out",
                             str(out), "--no-figures", "-q"], stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while time.monotonic() < deadline and proc.poll() is None:
            started = list((tmp_path / "runs").glob(".killed.partial-*/trajectory/"
                                                    "trajectory.json"))
            victim = _rank_pid(str(tmp_path / "runs"), 1) if started else None
            if victim is not None:
                break
            time.sleep(0.2)
        assert victim is not None, "rank 1 never started training"
        time.sleep(0.5)  # mid-run
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # the agent and the ranks die with it (PDEATHSIG)
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert f"rank 1 (pid {victim}) was killed by SIGKILL" in err, err
    assert not out.exists()
    assert not any((p / rundir.COMPLETE_MARK).exists() for p in (tmp_path / "runs").iterdir())
    assert _rank_pid(str(tmp_path / "runs"), 0) is None  # rank 0 was stopped too


def test_five_launches_exit_cleanly():
    """Each rank ends with barrier, destroy_process_group and an orderly exit
    (``process.clean_shutdown``); five 2-rank gloo launches, all must exit 0."""
    def one(_: int) -> str:
        with tempfile.TemporaryDirectory() as d:
            try:
                launch(2, [], Path(d), module="tests.distributed.tiny_worker")
            except Exception as exc:  # noqa: BLE001 - reported below
                return str(exc)
        return "ok"

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(one, range(5)))
    assert results == ["ok"] * 5, results


def test_fsdp_run_without_its_trajectory(runs, tmp_path):
    """record.keep_trajectory: false under FSDP2: the launcher deletes every rank's shards
    once rank 0 has measured them; the run is finished, measures what the run that kept
    its trajectory measured, and is re-analysed from its metrics."""
    raw = {**BASE["record"], "keep_trajectory": False}
    path, summary = run(_config("fsdp", raw), tmp_path / "run", figures=False,
                        progress=False)
    assert not (path / rundir.TRAJECTORY).exists()
    rundir.verify_run_dir(path)
    kept = runs["fsdp"][1]
    assert summary.gamma_hat == kept.gamma_hat and summary.mu_hat == kept.mu_hat
    again = runner.analyze(path, eps=[0.0, 0.1], progress=False)
    assert again.gamma_hat["0.0"] == kept.gamma_hat["0.0"]


@pytest.mark.parametrize("name, damage, why", [
    ("trajectory/rank-00001/x.bin", "cut", "(truncated?)"),
    ("trajectory/rank-00000/sketch/x-0000.npy", "flip", "checksum mismatch"),
    ("trajectory/rank-00001/s.bin", "flip", "checksum mismatch"),
    ("trajectory/rank-00001/sample.json", "kept", "its sample differs from rank 0's"),
])
def test_damaged_fsdp_sketch_run_is_refused_by_analyze(runs, tmp_path, name, damage, why):
    """An FSDP2 sketch run's per-rank files are verified as a single process's are (the
    mode's own verify, over every rank's part): one line, exit 2, the run unchanged."""
    from tests.regressions._damaged_runs import analyze, copy_run, damaged_line, files

    run = copy_run(runs["fsdp-sketch"][0], tmp_path / "r", manifest=damage != "kept")
    path = run / name
    if damage == "cut":
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[-9] ^= 0x10
        path.write_bytes(bytes(data))
    else:  # another kept step on rank 1 only: a sample no longer the ranks' common one
        meta = json.loads(path.read_text())
        meta["lr"][0] *= 2
        path.write_text(json.dumps(meta))
    before = files(run)
    status, err, after = analyze(run)
    assert status == 2 and len(err.splitlines()) == 1, err
    start = damaged_line(run, name) if damage != "kept" else damaged_line(
        run, "trajectory/rank-00001")
    assert err.startswith(start) and why in err, err
    assert after == before


def test_trackers_mirror_a_distributed_run(monkeypatch, tmp_path):
    """The launching process logs the finished run to W&B and MLflow (offline); rank 0
    writes TensorBoard's events into the run directory."""
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    from tests.tracker_files import finite, offline, wandb_runs

    store = offline(monkeypatch, tmp_path)
    out, _ = run(_config("ddp", epochs=1), tmp_path / "ddp", figures=False, progress=False,
                 trackers=("tensorboard", "wandb", "mlflow"))
    table = pd.read_parquet(out / "metrics.parquet")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    (logged,) = wandb_runs(tmp_path)
    assert logged.name == "ddp" and wandb.run is None
    assert logged.series("trajreg/step/D", "trajreg/step")[1] == finite(table, "D")[1].tolist()
    client = mlflow.MlflowClient(f"file:{store}")
    (ml,) = client.search_runs(["0"])
    history = client.get_metric_history(ml.info.run_id, "trajreg/step/a")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == (
        finite(table, "a")[1].tolist())
