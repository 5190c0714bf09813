"""The training techniques (train.grad_clip, train.accumulate, optim.warmup_steps,
optim.decay_exclude) on recorded runs: store and replay agree bit for bit, the stored
x_t are the optimizer's parameters in its order, and the recorded g_t and u_t are the
clipped, accumulated gradient, checked against a brute-force recomputation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from trajreg.record import TrajectoryStore
from trajreg.record.geometry import GRADIENTS
from trajreg.run import run
from trajreg.run.rundir import read_config
from trajreg.run.runner import load_flat
from trajreg.train.config import load_config
from trajreg.train.data import load_data
from trajreg.train.loop import batches, build, micro_batches, microbatch_loss, minibatch_loss
from trajreg.train.optim import trained_parameters

ALL = {  # every technique at once, with batch norm and dropout
    "model": {"width": 16, "dropout": 0.1},
    "optim": {"name": "momentum", "lr": 0.05, "weight_decay": 1e-3, "schedule": "cosine",
              "warmup_steps": 5, "decay_exclude": ["norm", "bias"]},
    "train": {"epochs": 2, "threads": 1, "accumulate": 2, "grad_clip": 0.5},
}


def _flat_state(cfg, state, order):
    model, _, _ = build(cfg, load_data(cfg.data))
    names = {id(p): n for n, p in model.named_parameters()}
    params = trained_parameters(cfg.optim, model) if order == "optimizer" else list(
        model.parameters())
    return np.concatenate([state[names[id(p)]].reshape(-1).numpy() for p in params])


def test_store_and_replay_agree_bit_for_bit_with_every_technique(tmp_path, one_thread):
    out, s_store = run(load_config(tiny(**ALL)), tmp_path / "store", figures=False,
                       progress=False)
    out_r, s_replay = run(load_config(tiny(record={"mode": "replay"}, **ALL)),
                          tmp_path / "replay", figures=False, progress=False)
    store, replay = (pd.read_parquet(o / "metrics.parquet") for o in (out, out_r))
    pd.testing.assert_frame_equal(store, replay, check_exact=True)
    assert s_store.gamma_hat == s_replay.gamma_hat
    cfg = read_config(out).run
    T = len(store)
    # eta_t: the cosine schedule times the warmup, by brute force
    lr = [0.05 * (1 + math.cos(math.pi * t / T)) / 2 * min(1.0, (t + 1) / 5) for t in range(T)]
    np.testing.assert_allclose(store["lr"], lr, rtol=1e-6)
    # the last stored row is the final state, in the optimizer's order (not the model's)
    rows = TrajectoryStore(out / "trajectory")
    state = torch.load(out / "final_state.pt")
    x_end = rows.row(T)
    assert np.array_equal(x_end, _flat_state(cfg, state, "optimizer"))
    assert not np.array_equal(x_end, _flat_state(cfg, state, "model"))


def test_step_loss_is_the_mean_of_its_micro_batches(tmp_path, one_thread):
    """l_t recomputed at the stored x_t is the logged loss bit for bit: each micro-batch
    with its own batch-norm statistics and dropout masks, then the float64 mean; the
    whole minibatch in one pass gives another value."""
    out, _ = run(load_config(tiny(**ALL)), tmp_path / "run", figures=False, progress=False)
    cfg = read_config(out).run
    data = load_data(cfg.data)
    table = pd.read_parquet(out / "metrics.parquet")
    rows = TrajectoryStore(out / "trajectory")
    model, _, _ = build(cfg, data)
    with torch.no_grad():
        for step, _, idx in batches(cfg, data):
            if step % 5:
                continue
            load_flat(cfg, model, rows.row(step))
            parts = [microbatch_loss(cfg, model, data, part, step, j).item()
                     for j, part in enumerate(micro_batches(cfg, idx))]
            assert len(parts) == 2
            assert (parts[0] + parts[1]) / 2 == table["loss"][step]
            assert minibatch_loss(cfg, model, data, idx, step).item() == table["loss"][step]
            assert microbatch_loss(cfg, model, data, idx, step).item() != table["loss"][step]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_recorded_gradient_is_the_clipped_accumulated_gradient(tmp_path, accumulate, one_thread):
    """Plain SGD: the recorded g_t has norm <= grad_clip, and is, like u_t / eta_t, the
    brute-force gradient of the step's micro-batches (each loss / accumulate), scaled by
    min(1, grad_clip / (||g|| + 1e-6)); the clip is active on most steps."""
    clip = 0.3
    cfg = load_config(tiny(model={"width": 16}, optim={"name": "sgd", "lr": 0.1},
                           train={"epochs": 1, "threads": 1, "accumulate": accumulate,
                                  "grad_clip": clip},
                           record={"mode": "store", "gradients": True}))
    out, _ = run(cfg, tmp_path / "run", figures=False, progress=False)
    data = load_data(cfg.data)
    rows, grads = TrajectoryStore(out / "trajectory"), TrajectoryStore(
        out / "trajectory" / GRADIENTS)
    table = pd.read_parquet(out / "metrics.parquet")
    model, _, _ = build(cfg, data)
    params = trained_parameters(cfg.optim, model)
    clipped = 0
    for step, _, idx in batches(cfg, data):
        load_flat(cfg, model, rows.row(step))
        for p in params:
            p.grad = None
        for j, part in enumerate(micro_batches(cfg, idx)):
            (microbatch_loss(cfg, model, data, part, step, j) / accumulate).backward()
        g = torch.cat([p.grad.reshape(-1) for p in params]).double().numpy()
        norm = np.linalg.norm(g)
        clipped += norm > clip
        expected = g * min(1.0, clip / (norm + 1e-6))
        g_t = grads.row(step).astype(np.float64)
        assert np.linalg.norm(g_t) <= clip * (1 + 1e-6)
        np.testing.assert_allclose(g_t, expected, rtol=1e-4, atol=1e-6 * np.abs(g).max())
        v_t = (rows.row(step).astype(np.float64) - rows.row(step + 1)) / table["lr"][step]
        np.testing.assert_allclose(v_t, g_t, rtol=0, atol=1e-5 * clip)
    assert clipped >= len(table) // 2
