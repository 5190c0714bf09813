"""Record mode ``sample``: exact quantities at a random sample of steps, in one pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import tiny
from tests.linear_loop import linear_problem, mse, train_with_session
from trajreg.atomic import read_json
from trajreg.errors import ConfigError
from trajreg.principle import (
    default_delta,
    gamma_hat_interval,
    kappa_hat_interval,
    trajectory_quantities,
)
from trajreg.record.modes import MODE_NAMES, get_mode
from trajreg.record.modes.sample import (
    ROWS,
    SampleMode,
    SampleStore,
    StepSampler,
    effective_rate,
)
from trajreg.record.recorder import set_flat_params
from trajreg.run.runner import analyze, run
from trajreg.train.config import RECORD_MODES, DataConfig, load_config
from trajreg.train.data import load_data

SMALL = {"model": {"width": 16}, "train": {"epochs": 4}}


def _cfg(record, **over):
    return load_config(tiny(record=record, **{**SMALL, **over}))


def test_registry_and_config_know_the_mode():
    assert "sample" in MODE_NAMES and RECORD_MODES == MODE_NAMES
    assert get_mode("sample") is SampleMode
    mode = SampleMode.from_config(_cfg({"mode": "sample", "sample_rate": 0.25}).record, seed=7)
    assert mode.rate == 0.25 and mode.sampler.seed == 7


@pytest.mark.parametrize("rate", [0, -0.1, 1.5, float("nan")])
def test_sample_rate_outside_0_1_is_one_config_error(rate):
    with pytest.raises(ConfigError, match=r"^record\.sample_rate: must be") as exc:
        _cfg({"mode": "sample", "sample_rate": rate})
    assert "\n" not in str(exc.value)


def test_sampler_is_a_pure_function_of_seed_and_step():
    a, b = StepSampler(0.1, seed=3), StepSampler(0.1, seed=3)
    n = 10_000  # more than one block
    forward = [a.keep(t) for t in range(n)]
    backward = [b.keep(t) for t in reversed(range(n))][::-1]  # any order, fresh cache
    assert forward == backward
    assert np.array_equal(np.flatnonzero(forward), a.kept(n))
    assert abs(np.mean(forward) - 0.1) < 0.01
    assert a.kept(n).tolist() != StepSampler(0.1, seed=4).kept(n).tolist()
    assert a.kept(n).tolist() != StepSampler(0.1, seed=3, stream=4).kept(n).tolist()
    assert StepSampler(1.0).kept(50).tolist() == list(range(50))


def test_sampled_quantities_equal_store_bit_for_bit(tmp_path, one_thread):
    _, exact = run(_cfg({"mode": "store"}), tmp_path / "store", figures=False, progress=False)
    # sample_min_steps 0: the rate alone (the default would keep every step of 32)
    with pytest.warns(UserWarning, match="record.sample_rate: 0.3 of 32 steps"):
        out, summary = run(_cfg({"mode": "sample", "sample_rate": 0.3, "sample_min_steps": 0}),
                           tmp_path / "sample", figures=False, progress=False)
    full = pd.read_parquet(tmp_path / "store" / "metrics.parquet").set_index("step")
    got = pd.read_parquet(out / "metrics.parquet")
    kept = StepSampler(0.3, seed=0).kept(summary.n_steps)
    assert got["step"].tolist() == kept.tolist() and 0 < len(kept) < summary.n_steps
    want = full.loc[kept]
    for col in ("D", "a", "s", "b", "loss", "loss_star", "lr", "epoch", "c", "r"):
        assert np.array_equal(want[col].to_numpy(), got[col].to_numpy(), equal_nan=True), col
    # the window, x* and the speed come from every step, as in store mode
    assert summary.window == exact.window and summary.f_star == exact.f_star
    assert summary.reference_step == exact.reference_step == summary.n_steps
    assert len(pd.read_parquet(out / "trainlog.parquet")) == summary.n_steps
    # the summary's intervals, from the window's samples
    n = int(((kept >= summary.window[0]) & (kept < summary.window[1])).sum())
    assert summary.n_sampled_window == n
    assert set(summary.gamma_hat_ci) == set(summary.gamma_hat) == {"0.0", "0.05"}
    low, high = summary.gamma_hat_ci["0.0"]
    assert low is None and high == summary.gamma_hat["0.0"]  # eps 0: an upper bound only
    assert summary.gamma_hat_ci["0.05"][0] is None  # n < 72: insufficient for a lower side
    assert len(summary.gamma_bar_ci) == 2 and set(summary.kappa_hat_ci) == {"0.0", "0.05"}
    raw = read_json(out / "summary.json")
    assert raw["gamma_hat_ci"]["0.05"][0] is None and raw["n_sampled_window"] == n


def test_analyze_reanalyses_a_sample_without_retraining(tmp_path, one_thread, monkeypatch):
    with pytest.warns(UserWarning):
        out, first = run(_cfg({"mode": "sample", "sample_rate": 0.5, "sample_min_steps": 0}),
                         tmp_path / "r", figures=False, progress=False)
    before = pd.read_parquet(out / "metrics.parquet")

    def no_data(*_):
        raise AssertionError("analyze loaded the data: it re-measured")

    monkeypatch.setattr("trajreg.run.runner.load_data", no_data)
    with pytest.warns(UserWarning, match="insufficient samples"):
        again = analyze(out, eps=[0.0, 0.1], window=(2, 20))
    assert again.window == [2, 20] and set(again.gamma_hat) == {"0.0", "0.1"}
    after = pd.read_parquet(out / "metrics.parquet")
    assert after["step"].tolist() == before["step"].tolist()
    assert np.array_equal(after["a"], before["a"])
    w = (before["step"] >= 2) & (before["step"] < 20)
    assert again.n_sampled_window == int(w.sum())
    assert again.n_steps == first.n_steps and again.full_loss == first.full_loss


def test_files_hold_only_the_sampled_rows(tmp_path, one_thread):
    with pytest.warns(UserWarning):
        out, summary = run(_cfg({"mode": "sample", "sample_rate": 0.2, "sample_min_steps": 0},
                                train={"epochs": 6}), tmp_path / "r", figures=False,
                           progress=False)
    store = SampleStore(out / "trajectory")
    T, d = summary.n_steps, store.d
    kept = store.kept
    assert set(store.iterates) == {0, T - 1, T} | set(kept) | set(kept + 1)
    assert (out / "trajectory" / ROWS).stat().st_size == len(store.iterates) * d * 4
    assert len(store.iterates) <= 2 * len(kept) + 3


def _plain_loop(out, mode, epochs=3, seed=None, warns=True):
    """A hand-written loop whose data order is not derived from any seed trajreg knows."""
    from trajreg.integrations import RegularitySession

    torch.manual_seed(int.from_bytes(os.urandom(4), "little") if seed is None else seed)
    data = load_data(DataConfig(name="digits", subset=512))
    x, y = data.x_train, data.y_train
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    session = RegularitySession(out, source="plain", figures=False, mode=mode)
    session.start(model, opt)
    xs, batches = [], []
    for _ in range(epochs):
        order = torch.randperm(len(x))  # unseeded shuffle
        for i in range(len(x) // 32):
            batch = (x[order[i * 32:(i + 1) * 32]], y[order[i * 32:(i + 1) * 32]])
            session.before_batch()
            loss = loss_fn(model, batch)
            session.after_batch(batch, loss)
            xs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
            batches.append(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        session.end_epoch()
    xs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    if warns:
        with pytest.warns(UserWarning, match="insufficient samples"):
            summary = session.finish(model, loss_fn)
    else:
        summary = session.finish(model, loss_fn)
    return summary, torch.stack(xs).numpy(), batches, model, loss_fn


def test_session_sample_is_exact_with_an_unseeded_data_order(tmp_path, one_thread):
    out = tmp_path / "run"
    summary, xs, batches, model, loss_fn = _plain_loop(out, SampleMode(rate=0.3, seed=5))
    table = pd.read_parquet(out / "metrics.parquet")
    steps = table["step"].to_numpy()
    assert steps.tolist() == StepSampler(0.3, seed=5).kept(len(xs) - 1).tolist()
    q = trajectory_quantities(xs, np.full(len(xs) - 1, 0.05), xs[-1].astype(np.float64))
    for col, want in (("a", q.a), ("s", q.s), ("D", q.D[:-1])):
        assert np.array_equal(table[col].to_numpy(), want[steps]), col
    set_flat_params(list(model.parameters()), xs[-1])
    with torch.no_grad():
        star = [loss_fn(model, batches[t]).item() for t in steps]
    assert np.array_equal(table["loss_star"].to_numpy(), star)
    assert summary.loss_check == {"steps": len(steps), "equal": len(steps), "max_abs_diff": 0.0}
    # only the kept steps' micro-batches are on disk; the log has every step
    assert len(json.loads((out / "batches" / "index.json").read_text())["records"]) == len(steps)
    assert len(pd.read_parquet(out / "trainlog.parquet")) == summary.n_steps == len(xs) - 1
    assert summary.n_sampled_window == int(((steps >= summary.window[0])
                                            & (steps < summary.window[1])).sum())


# the nets of the coverage test: the tiny digits MLP and the small CNN (d = 6090) of
# bench_onepass.py, on all of digits at batch 32 (44 steps an epoch)
COVERAGE_NETS = {
    "mlp": {},
    "cnn": {"model": {"name": "cnn", "width": 16, "activation": "relu", "norm": "batch"},
            "optim": {"name": "momentum", "lr": 0.05}},
}


COVERAGE_DRAWS = 300  # sampler draws a run, on the store run's rows


def _intervals(full, kept, window, eps):
    """gamma_hat's and kappa_hat's intervals from the window's rows ``full`` (a, b, s,
    lr, delta) at the kept steps, as sample mode computes them."""
    m = kept[(kept >= window[0]) & (kept < window[1])] - window[0]
    a, b, s, lr, delta = (full[c][m] for c in ("a", "b", "s", "lr", "delta"))
    return gamma_hat_interval(a, b, s, delta, eps), kappa_hat_interval(a, b, s, lr, eps)


@pytest.mark.slow
@pytest.mark.parametrize("net", sorted(COVERAGE_NETS))
def test_interval_covers_the_exact_gamma_hat(net, tmp_path, one_thread):
    """Three seeds, a fixed window of 540 steps, rate 0.25 raised to 200/616 = 0.325 by
    the default sample_min_steps (issue 19): about 175 window samples each, 100 at
    least (the count is the sampler's, a function of seed and step only: the same on
    every CPU). (The CNN: about 30 s on one idle core.)

    Coverage is a frequency, so it is tested as one: whether one sample's 95% interval
    holds the exact value is a draw, and float32 training differs by CPU (issue 20), the
    CNN's trajectory macroscopically (seed 1: gamma_hat(0) 1.66 under one kernel
    selection, 1.93 under another), which redraws it. Measured over 2000 draws on each
    of the 6 runs under two kernel selections, the two-sided interval (eps 0.05) missed
    in 0.5-0.95% of draws (it is conservative), so a test of the one sample of each of
    3 seeds failed on about 1 CPU in 40 a net. Here the run's own sample must give the
    interval that the principle gives on the store run's rows at its kept steps (bit for
    bit, one machine), and over COVERAGE_DRAWS sampler seeds a run the misses must stay
    within the nominal 5% (at the measured rate of at most 1%, 10 standard deviations
    above the expected count). eps 0 has only the upper side, the sample's minimum,
    which the exact minimum can never exceed: no miss at all."""
    window = (0, 540)
    misses = {"0.0": 0, "0.05": 0}
    draws = 0
    for seed in (0, 1, 2):
        cfg = {"seed": seed, "data": {"subset": None, "batch_size": 32},
               "train": {"epochs": 14}, **COVERAGE_NETS[net]}
        exact_dir, _ = run(_cfg({"mode": "store"}, **cfg), tmp_path / f"s{seed}",
                           figures=False, progress=False)
        sample_dir, _ = run(_cfg({"mode": "sample", "sample_rate": 0.25}, **cfg),
                            tmp_path / f"m{seed}", figures=False, progress=False)
        exact = analyze(exact_dir, window=window)
        sampled = analyze(sample_dir, window=window)
        assert sampled.n_sampled_window >= 100
        rows = pd.read_parquet(exact_dir / "metrics.parquet")
        assert rows["step"].tolist() == list(range(exact.n_steps))
        full = {c: rows[c].to_numpy()[slice(*window)] for c in ("a", "b", "s", "lr")}
        full["delta"] = default_delta(full["lr"])
        kept = pd.read_parquet(sample_dir / "metrics.parquet")["step"].to_numpy()
        rate = effective_rate(0.25, 200, exact.n_steps)
        for eps in misses:
            g, k = _intervals(full, kept, window, float(eps))
            assert sampled.gamma_hat_ci[eps] == [g.low, g.high], eps
            assert sampled.kappa_hat_ci[eps] == [k.low, k.high], eps
            assert (g.low is None) == (eps == "0.0")
        for draw in range(COVERAGE_DRAWS):
            kept = StepSampler(rate, seed=1000 * (seed + 1) + draw).kept(exact.n_steps)
            draws += 1
            for eps in misses:
                g, k = _intervals(full, kept, window, float(eps))
                want, kwant = exact.gamma_hat[eps], exact.kappa_hat[eps]
                covered = (g.low is None or g.low <= want) and want <= g.high
                # kappa_hat = gamma_hat * eta: the same draw, within the product's rounding
                kcovered = ((k.low is None or k.low <= kwant * (1 + 1e-12))
                            and kwant <= k.high * (1 + 1e-12))
                misses[eps] += (not covered) or (not kcovered)
    assert misses["0.0"] == 0
    assert misses["0.05"] <= 0.05 * draws, (misses, draws)


@pytest.mark.slow
def test_cli_refuses_a_bad_sample_rate(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(tiny(record={"mode": "sample", "sample_rate": 2})))
    proc = subprocess.run([sys.executable, "-m", "trajreg.cli", "run", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trajreg: error: record.sample_rate:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_diverged_run_is_measured_as_in_store_mode(tmp_path, one_thread):
    blow_up = {"model": {"width": 16, "norm": "none", "activation": "identity"},
               "optim": {"name": "sgd", "lr": 50.0}, "train": {"epochs": 5}}
    _, exact = run(_cfg({"mode": "store"}, **blow_up), tmp_path / "store", figures=False,
                   progress=False)
    with pytest.warns(UserWarning):
        out, summary = run(_cfg({"mode": "sample", "sample_rate": 0.5, "sample_min_steps": 0},
                                **blow_up), tmp_path / "sample", figures=False, progress=False)
    assert summary.diverged and summary.diverged_step == exact.diverged_step
    assert summary.reference_step == exact.reference_step == summary.n_steps - 1
    want = pd.read_parquet(tmp_path / "store" / "metrics.parquet").set_index("step")
    got = pd.read_parquet(out / "metrics.parquet")
    for col in ("D", "a", "s", "b"):
        assert np.array_equal(want.loc[got["step"], col].to_numpy(), got[col].to_numpy(),
                              equal_nan=True), col


@pytest.mark.parametrize("mode", ["sample", "sketch"])
def test_a_reference_other_than_final_is_refused_before_training(mode, tmp_path):
    cfg = load_config(tiny(record={"mode": mode}, analysis={"reference": "best"}))
    with pytest.raises(ConfigError, match=r"^analysis\.reference: record mode \w+ measures "
                                          r"against the final iterate only"):
        run(cfg, tmp_path / "r", figures=False, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_iterate_not_kept_is_refused_unless_the_run_diverged(tmp_path, one_thread):
    """``trajreg analyze --reference best`` asks for an epoch end the sample did not keep."""
    from types import SimpleNamespace

    from trajreg.errors import UserError

    with pytest.warns(UserWarning):
        out, summary = run(_cfg({"mode": "sample", "sample_rate": 0.2, "sample_min_steps": 0}),
                           tmp_path / "r", figures=False, progress=False)
    store = SampleStore(out / "trajectory")
    missing = next(t for t in range(summary.n_steps) if not store.has(t))
    mode = SampleMode(rate=0.2)
    trained = SimpleNamespace(log=SimpleNamespace(diverged_step=None))
    with pytest.raises(UserError, match="final iterate only"):
        mode.reference(store, missing, trained)
    diverged = SimpleNamespace(log=SimpleNamespace(diverged_step=summary.n_steps))
    assert mode.reference(store, missing, diverged) == max(store.iterates[store.iterates
                                                                          < missing])
    assert mode.reference(store, summary.n_steps, trained) == summary.n_steps


def test_session_sample_measures_a_diverged_loop_up_to_it(tmp_path):
    from trajreg.integrations import RegularitySession

    model, opt, batch = linear_problem(lr=0.01)
    session = RegularitySession(tmp_path / "run", source="plain", figures=False,
                                mode=SampleMode(rate=0.5, seed=0))
    train_with_session(session, model, opt, batch, 12, blow_up_at=5)
    with pytest.warns(UserWarning):
        summary = session.finish(model, mse)
    assert summary.diverged and summary.reference_step <= summary.diverged_step
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert np.isfinite(table["D"]).all() and (table["step"] < summary.diverged_step).all()
