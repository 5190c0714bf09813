"""Recording the minibatch gradient g_t: the recorder's flat gradient, every mode's
records of it, and g_t against the update v_t on real runs.

For SGD without weight decay the optimizer computes x_{t+1} = fl(x_t - fl(eta' g_t)) in
float32, with eta' = fl32(eta_t) (torch casts the step size to the parameters' type),
so per coordinate, with u = 2^-24 (unit roundoff of float32),

    |v_i - g_i| <= (2u + u^2) |g_i| + u (1 + u) |x_{t+1,i}| / eta,

the relative error of a coordinate about ulp(x) / (eta |g|); hence
||v_t - g_t|| <= B_t = 2.01 u ||g_t|| + 1.01 u ||x_{t+1}|| / eta_t, and by Cauchy-Schwarz

    |a_t - g_dot_t| <= B_t sqrt(D_t),   |s_t - g_norm2_t| <= B_t (sqrt(s_t) + sqrt(g_norm2_t))

(the float64 sums that compute a_t and g_dot_t err by about d 2^-53 relative, far
below). The tests check these bounds on the aggregated quantities and that Adam's
update differs from its gradient by orders of magnitude more.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from trajreg.errors import ConfigError
from trajreg.principle import gradient_quantities, trajectory_quantities
from trajreg.record import Recorder, TrajectoryStore
from trajreg.record.geometry import GRADIENTS
from trajreg.record.modes import get_mode
from trajreg.record.modes.sample import SampleStore
from trajreg.record.modes.store import StoreMode
from trajreg.record.recorder import flat_grads
from trajreg.run.runner import run
from trajreg.train.config import load_config

U = 2.0**-24  # float32 unit roundoff
SMALL = {"model": {"width": 16}, "train": {"epochs": 2, "threads": 1}}


def _cfg(record=None, **over):
    return load_config(tiny(record=record or {"mode": "store"}, **{**SMALL, **over}))


# ------------------------------------------------------------------ the recorder's g_t


def test_flat_grads_in_flat_order_with_zeros_for_missing_grads():
    a, b, c = (torch.nn.Parameter(torch.randn(*shape)) for shape in ((2, 3), (4,), (1, 2)))
    a.grad, c.grad = torch.ones(2, 3), torch.full((1, 2), 5.0)  # b has no grad
    flat = flat_grads([a, b, c])
    assert flat.tolist() == [1.0] * 6 + [0.0] * 4 + [5.0, 5.0]
    out = torch.full((12,), 7.0)
    assert flat_grads([a, b, c], out=out) is out and torch.equal(out, flat)
    b.grad = torch.arange(4.0)
    assert torch.equal(flat_grads([a, b, c]), torch.cat([a.grad.ravel(), b.grad, c.grad.ravel()]))
    assert torch.equal(flat_grads([a, b, c], out=out), flat_grads([a, b, c]))


def test_gradients_option_defaults_per_mode():
    for name, default in (("store", False), ("replay", False), ("sample", True),
                          ("sketch", True), ("off", False)):
        cls = get_mode(name)
        assert cls.from_config(_cfg({"mode": name}).record).gradients is default, name
        assert cls.from_config(None).gradients is default, name
        if name != "off":
            for value in (True, False):
                cfg = _cfg({"mode": name, "gradients": value}).record
                assert cls.from_config(cfg).gradients is value, (name, value)
    assert StoreMode(gradients=True).gradients and not StoreMode().gradients
    with pytest.raises(ConfigError, match=r"^record\.gradients: record mode off"):
        _cfg({"mode": "off", "gradients": True})
    with pytest.raises(ConfigError, match=r"^record\.gradients: must be true or false"):
        _cfg({"mode": "store", "gradients": "yes"})


def test_store_rows_are_the_gradients_the_optimizer_uses(tmp_path):
    """Clipping happens before optimizer.step: the row is the clipped gradient. A
    parameter the loss does not reach has no grad: its entries are 0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    unused = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.SGD([*model.parameters(), unused], lr=0.1, momentum=0.9)
    rec = Recorder(opt, tmp_path / "traj", mode=StoreMode(gradients=True))
    seen = []
    for _ in range(7):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        seen.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]
                              + [torch.zeros(5)]).clone())
        opt.step()
    rec.close()
    grads = TrajectoryStore(tmp_path / "traj" / GRADIENTS)
    assert grads.rows == grads.steps == 7 and grads.closed and grads.d == rec.d
    assert np.array_equal(grads.read(0, 7), torch.stack(seen).numpy())
    assert np.array_equal(grads.lrs, TrajectoryStore(tmp_path / "traj").lrs)
    assert np.linalg.norm(grads.row(3)) <= 0.05 * (1 + 1e-6)  # clipped


# ------------------------------------------------------------------ real runs


def _bound(table: pd.DataFrame, store: TrajectoryStore) -> np.ndarray:
    """B_t >= ||v_t - g_t|| for SGD without weight decay (module docstring)."""
    T = len(table)
    x_next = np.array([np.linalg.norm(store.row(t + 1).astype(np.float64)) for t in range(T)])
    return (2.01 * U * np.sqrt(table["g_norm2"].to_numpy())
            + 1.01 * U * x_next / table["lr"].to_numpy())


@pytest.mark.slow
def test_sgd_gradient_is_the_update_and_adam_is_not(tmp_path):
    record = {"mode": "store", "gradients": True}
    out, _ = run(_cfg(record), tmp_path / "sgd", figures=False, progress=False)
    table = pd.read_parquet(out / "metrics.parquet")
    store = TrajectoryStore(out / "trajectory")
    B = _bound(table, store)
    a, g_dot, s, g2, D = (table[c].to_numpy() for c in ("a", "g_dot", "s", "g_norm2", "D"))
    err_a = np.abs(a - g_dot) / (B * np.sqrt(D))
    err_s = np.abs(s - g2) / (B * (np.sqrt(s) + np.sqrt(g2)))
    assert err_a.max() <= 1 and err_s.max() <= 1, (err_a.max(), err_s.max())
    # the very rows: ||v_t - g_t|| <= B_t at every step
    grads = TrajectoryStore(out / "trajectory" / GRADIENTS)
    for t in range(len(table)):
        v = (store.row(t).astype(np.float64) - store.row(t + 1)) / table["lr"].iloc[t]
        assert np.linalg.norm(v - grads.row(t)) <= B[t]
    assert (np.abs(a - g_dot) > 0).any()  # rounding is there, and bounded

    out, _ = run(_cfg(record, optim={"name": "adam", "lr": 1e-2}), tmp_path / "adam",
                 figures=False, progress=False)
    table = pd.read_parquet(out / "metrics.parquet")
    B = _bound(table, TrajectoryStore(out / "trajectory"))
    s, g2 = table["s"].to_numpy(), table["g_norm2"].to_numpy()
    assert np.median(np.abs(s - g2) / (B * (np.sqrt(s) + np.sqrt(g2)))) > 1e3
    assert np.median(np.abs(s - g2) / g2) > 0.1


@pytest.mark.slow
def test_every_mode_measures_the_same_gradient_quantities(tmp_path):
    """store (reading trajectory/grad/), replay (recomputed while replaying), sample (at
    its kept steps) and sketch (S = I here, d <= k) give store's g_dot, g_norm2; a
    sketch with k < d estimates g_dot and has g_norm2 exactly."""
    # sample_min_steps 0: the rate alone (the default, 200, would keep every step of 16)
    on = {"gradients": True, "sample_rate": 0.4, "sample_min_steps": 0}
    with pytest.warns(UserWarning, match="record.sample_rate: 0.4 of 16 steps"):
        outs = {m: run(_cfg({"mode": m, **on}), tmp_path / m, figures=False,
                       progress=False)[0] for m in ("store", "replay", "sample", "sketch")}
    tables = {m: pd.read_parquet(o / "metrics.parquet") for m, o in outs.items()}
    ref = tables["store"]
    for m in ("replay", "sketch"):
        for c in ("g_dot", "g_norm2"):
            np.testing.assert_allclose(tables[m][c], ref[c], rtol=1e-12, atol=0, err_msg=m)
    sampled = tables["sample"]
    assert 0 < len(sampled) < len(ref)
    for c in ("g_dot", "g_norm2"):
        np.testing.assert_allclose(sampled[c], ref[c].to_numpy()[sampled["step"]], rtol=1e-12)
    # the sample's g rows are store's rows
    sample, grads = SampleStore(outs["sample"] / "trajectory"), TrajectoryStore(
        outs["store"] / "trajectory" / GRADIENTS)
    for t in sample.kept[:3]:
        assert np.array_equal(sample.grad(t), grads.row(t))

    out, _ = run(_cfg({"mode": "sketch", "sketch_dim": 256, "sketch_sample_rate": 0.5}),
                 tmp_path / "sketch256", figures=False, progress=False)
    table = pd.read_parquet(out / "metrics.parquet")
    np.testing.assert_allclose(table["g_norm2"], ref["g_norm2"], rtol=1e-12)  # exact
    exact = np.isfinite(table["g_dot_exact"].to_numpy())
    assert exact.any()
    np.testing.assert_allclose(table["g_dot_exact"][exact], ref["g_dot"][exact], rtol=1e-12)
    rel = np.abs(table["g_dot"] - ref["g_dot"]) / np.abs(ref["g_dot"])
    assert 0 < np.median(rel) < 0.5  # an estimate (k = 256 of d = 1546), not the value


def test_stored_gradients_give_the_principle_quantities(tmp_path):
    """The store's measure is principle.gradient_quantities on its stored rows."""
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rec = Recorder(opt, tmp_path / "traj", mode=StoreMode(gradients=True))
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(4, 5)).square().mean().backward()
        opt.step()
    rec.close()
    xs, gs = TrajectoryStore(tmp_path / "traj"), TrajectoryStore(tmp_path / "traj" / GRADIENTS)
    from trajreg.record.geometry import stream_gradient_quantities

    x_star = xs.row(5).astype(np.float64)
    g_dot, g_norm2 = stream_gradient_quantities(xs, gs, 5, x_star)
    want = gradient_quantities(xs.read(0, 5), gs.read(0, 5), x_star)
    assert np.array_equal(g_dot, want.g_dot) and np.array_equal(g_norm2, want.g_norm2)
    q = trajectory_quantities(xs.read(0, 6), xs.lrs, x_star)
    assert np.array_equal(q.D[:-1], want.D)


def test_sketched_gradients_staged_as_on_an_accelerator(tmp_path):
    """The staged path (sketches gathered 64 rows at a time on the device, as on a GPU)
    writes the same S g_t rows and ||g_t||^2 as the direct one; S g_t is the principle's
    countsketch of g_t with the run's hash seed."""
    from trajreg.principle import countsketch
    from trajreg.record.modes.sketch import G_FILE, GRAD_SKETCHES, SketchMode, hash_seed

    def record(stage, where):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mode = SketchMode(dim=64, check_rate=0.3, seed=2, stage=stage, gradients=True)
        rec = Recorder(opt, where, mode=mode)
        grads = []
        for _ in range(70):  # more than one staged block of 64
            opt.zero_grad()
            model(torch.randn(8, 20)).square().mean().backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
            opt.step()
        rec.close()
        return TrajectoryStore(where / GRAD_SKETCHES), np.fromfile(where / G_FILE), grads

    direct, g2_direct, grads = record(False, tmp_path / "a")
    staged, g2_staged, _ = record(True, tmp_path / "b")
    assert direct.rows == staged.rows == 70 and direct.d == 64
    assert np.array_equal(direct.read(0, 70), staged.read(0, 70))
    assert np.array_equal(g2_direct, g2_staged)
    g = torch.stack(grads).double().numpy()
    np.testing.assert_allclose(g2_direct, (g * g).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(direct.row(5), countsketch(grads[5].numpy(), 64, hash_seed(2)),
                               rtol=1e-12, atol=1e-15)
