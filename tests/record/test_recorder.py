"""The recorder on real training runs: exact rows, the exact identity, every optimizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import tiny
from trajreg.principle import identity_residual, trajectory_quantities
from trajreg.record import Recorder, TrajectoryStore
from trajreg.record.recorder import flat_params
from trajreg.train.config import load_config
from trajreg.train.data import load_data
from trajreg.train.loop import build, train


def _loop(optimizer_factory, tmp_path, steps=40, capacity=4096, **rec):
    """A hand-written loop (not the reference one): the recorder is one added line."""
    torch.manual_seed(0)
    data = load_data(load_config(tiny()).data)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 10))
    optimizer = optimizer_factory(model)
    recorder = Recorder(optimizer, tmp_path / "traj", capacity=capacity, **rec)
    seen, grads = [], []
    for t in range(steps):
        idx = torch.arange(t * 8, t * 8 + 32) % len(data.x_train)
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        seen.append(flat_params(list(model.parameters())).clone())
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
        optimizer.step()
    seen.append(flat_params(list(model.parameters())).clone())
    recorder.close()
    store = TrajectoryStore(tmp_path / "traj") if recorder.mode.name == "store" else recorder
    return store, torch.stack(seen).numpy(), torch.stack(grads)


OPTIMIZERS = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
    "momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "nesterov": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1),
    "sgd_wd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=0.01),
    "rmsprop": lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3),
    "adagrad": lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-2),
    # per-group learning rates and weight decay: eta_t is group 0's lr
    "groups": lambda m: torch.optim.SGD([
        {"params": m[1].parameters(), "lr": 0.1, "weight_decay": 0.01},
        {"params": m[3].parameters(), "lr": 0.02}], lr=0.1, momentum=0.5),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_rows_are_the_iterates_and_identity_is_exact(name, tmp_path):
    store, seen, _ = _loop(OPTIMIZERS[name], tmp_path)
    assert store.rows == len(seen) and store.steps == len(seen) - 1 and store.closed
    xs = np.stack([store.row(t) for t in range(store.rows)])
    assert np.array_equal(xs, seen)  # bit for bit
    q = trajectory_quantities(xs, store.lrs, xs[-1])
    resid = identity_residual(q.D, q.a, q.s, store.lrs)
    assert np.max(np.abs(resid)) <= 1e-12 * max(1.0, q.D.max())


def test_sgd_effective_gradient_is_the_gradient(tmp_path):
    store, seen, grads = _loop(OPTIMIZERS["sgd"], tmp_path)
    x_star = seen[-1].astype(np.float64)
    q = trajectory_quantities(seen, store.lrs, x_star)
    g = grads.double().numpy()
    a_ref = np.einsum("td,td->t", seen[:-1].astype(np.float64) - x_star, g)
    np.testing.assert_allclose(q.a, a_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q.s, (g**2).sum(1), rtol=1e-5)
    assert np.all(store.lrs == 0.1)


def test_segments_and_replay_stream_agree_with_store(tmp_path):
    store, seen, _ = _loop(OPTIMIZERS["momentum"], tmp_path, steps=23, capacity=5)
    assert len(store.meta["segments"]) == 5  # 24 rows in segments of 5
    blocks = list(store.blocks(store.rows - 1, block_rows=4))
    assert [t0 for t0, _ in blocks] == list(range(0, 23, 4))
    assert np.array_equal(np.concatenate([b[:-1] for _, b in blocks] + [blocks[-1][1][-1:]]),
                          seen)
    # the same loop in replay mode (x* known in advance) gives the same quantities
    x_star = seen[-1]
    rec, seen2, _ = _loop(OPTIMIZERS["momentum"], tmp_path / "r", steps=23, mode="replay",
                          x_star=x_star)
    assert np.array_equal(seen2, seen)
    ref = trajectory_quantities(seen, store.lrs, x_star)
    got = rec.stream.compute()
    for key in ("a", "s", "lr"):
        assert np.array_equal(got[key], getattr(ref, key) if key != "lr" else store.lrs), key
    assert np.array_equal(got["D"], ref.D[:-1])


def test_sidecar_counts_only_rows_written(tmp_path):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(opt, tmp_path / "t", capacity=100, sync_seconds=0.0)
    for _ in range(4):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
    # not closed: a crash here leaves 4 valid iterates and no final row
    store = TrajectoryStore(tmp_path / "t")
    assert (store.rows, store.steps, store.closed) == (4, 4, False)
    rec.close()
    store = TrajectoryStore(tmp_path / "t")
    assert (store.rows, store.steps, store.closed) == (5, 4, True)
    with pytest.raises(FileExistsError):
        Recorder(opt, tmp_path / "t")


def test_off_mode_adds_no_hooks_and_bad_arguments(tmp_path):
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    rec = Recorder(opt, mode="off")
    assert not opt._optimizer_step_pre_hooks and rec.mode.name == "off"
    with pytest.raises(ValueError, match="mode"):
        Recorder(opt, tmp_path, mode="tape")
    with pytest.raises(ValueError, match="directory"):
        Recorder(opt)
    with pytest.raises(ValueError, match="x_star"):
        Recorder(opt, mode="replay")
    with pytest.raises(ValueError, match="x_star has shape"):
        Recorder(opt, mode="replay", x_star=np.zeros(5))


def test_quadratic_with_closed_form_gamma(tmp_path):
    """Full-batch GD on f(x) = ||x||^2 / 2 with x* = 0: x_{t+1} = (1 - eta) x_t, so
    a_t = ||x_t||^2, s_t = ||x_t||^2, b_t = ||x_t||^2 / 2 and r_t = (1 - eta/2) * 2 = 2 - eta:
    gamma_hat is exactly 2 - eta, and the bound's two sides are known."""
    from trajreg.principle import convergence_bound, gamma_hat, kappa_hat

    eta = 0.25
    x = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    opt = torch.optim.SGD([x], lr=eta)
    losses = []
    with Recorder(opt, tmp_path / "q"):
        for _ in range(30):
            loss = 0.5 * (x**2).sum()
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    store = TrajectoryStore(tmp_path / "q")
    xs = np.stack([store.row(t) for t in range(store.rows)])
    q = trajectory_quantities(xs, store.lrs, np.zeros(2))
    b = np.asarray(losses)  # f(x*) = 0
    delta = store.lrs / 2
    assert gamma_hat(q.a, b, q.s, delta) == pytest.approx(2 - eta, rel=1e-12)
    assert kappa_hat(q.a, b, q.s, store.lrs) == pytest.approx(eta * (2 - eta), rel=1e-12)
    check = convergence_bound(b, store.lrs, q.D[0], 2 - eta)
    assert check.holds and check.rhs == pytest.approx(25 / (2 * (2 - eta) * eta * 30))


def test_reference_loop_rows_match_training(tmp_path):
    cfg = load_config(tiny(model={"dropout": 0.2}))
    data = load_data(cfg.data)
    model, opt, sched = build(cfg, data)
    with Recorder(opt, tmp_path / "t"):
        log = train(cfg, data, model, opt, sched)
    store = TrajectoryStore(tmp_path / "t")
    assert store.rows == log.steps + 1
    assert np.array_equal(store.row(log.steps), flat_params(list(model.parameters())).numpy())


@pytest.mark.parametrize("capacity, buffer_bytes, sync_seconds", [
    (7, 40, 5.0), (1500, 8 << 20, 5.0), (5, 1000, 0.0), (1, 16, 5.0)])
def test_writer_blocks_segments_and_syncs_keep_every_row(tmp_path, capacity, buffer_bytes,
                                                         sync_seconds):
    """Rows staged in buffers, written by the thread, across segment ends and syncs come
    back exactly, with one learning rate per step and none for x_T."""
    from trajreg.record.store import TrajectoryStore, TrajectoryWriter

    w = TrajectoryWriter(tmp_path / "t", 10, np.float32, capacity=capacity,
                         buffer_bytes=buffer_bytes, sync_seconds=sync_seconds)
    rows = []
    for i in range(51):
        row = w.next_row()
        row[:] = np.arange(10) + i
        rows.append(row.copy())
        w.commit_row(0.5 * i if i < 50 else None)
    w.close()
    store = TrajectoryStore(tmp_path / "t")
    assert (store.rows, store.steps, store.closed) == (51, 50, True)
    assert np.array_equal(np.stack([store.row(t) for t in range(51)]), np.array(rows))
    assert np.array_equal(store.lrs, 0.5 * np.arange(50))


def test_new_parameter_storage_mid_run_is_recorded(tmp_path):
    """``p.data = ...`` between steps (a reload, a manual edit: new storage) is seen: the
    recorder's cached flat views of the parameters are rebuilt, so the rows stay the true
    iterates and ``flat``/``grad_flat`` the current parameters and gradients."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder(optimizer, tmp_path / "traj")
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    seen = []
    for t in range(8):
        if t in (3, 5):
            for p in model.parameters():
                p.data = p.data + 0.25  # new storage, new values
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        now = flat_params(list(model.parameters())).clone()
        seen.append(now)
        with torch.no_grad():
            assert torch.equal(recorder.flat(out=torch.empty_like(now)), now)
            grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            assert torch.equal(recorder.grad_flat(out=torch.empty_like(now)), grads)
        optimizer.step()
    seen.append(flat_params(list(model.parameters())).clone())
    recorder.close()
    store = TrajectoryStore(tmp_path / "traj")
    assert np.array_equal(np.stack([store.row(t) for t in range(store.rows)]),
                          torch.stack(seen).numpy())
