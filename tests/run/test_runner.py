"""End to end: real training runs through ``trajreg.run`` and ``trajreg.analyze``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from trajreg.atomic import read_json
from trajreg.errors import ReplayMismatch
from trajreg.principle import identity_residual
from trajreg.record import TrajectoryStore
from trajreg.run import analyze, run
from trajreg.run.analysis import METRIC_COLUMNS
from trajreg.run.rundir import read_config
from trajreg.run.runner import load_flat, measure_replay
from trajreg.train.config import load_config
from trajreg.train.data import load_data
from trajreg.train.loop import TrainLog, batches, build, minibatch_loss, train

pytestmark = pytest.mark.slow

OPTIMS = {
    "sgd": {"name": "sgd", "lr": 0.05},
    "momentum": {"name": "momentum", "lr": 0.02},
    "adam": {"name": "adam", "lr": 1e-3},
    "sgd_wd": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-3},
}


def _run(tmp_path, name="run", **sections):
    return run(load_config(tiny(**sections)), tmp_path / name)


@pytest.mark.parametrize("optim", sorted(OPTIMS))
def test_identity_on_recorded_runs(optim, tmp_path):
    out, summary = _run(tmp_path, optim=OPTIMS[optim])
    table = pd.read_parquet(out / "metrics.parquet")
    assert list(table.columns) == METRIC_COLUMNS
    D = np.append(table["D"].to_numpy(), 0.0)  # x* = x_T
    resid = identity_residual(D, table["a"], table["s"], table["lr"])
    assert np.max(np.abs(resid)) <= 1e-10 * D.max()
    assert summary.n_steps == len(table) == 3 * (512 // 64)
    assert set(summary.gamma_hat) == {"0.0", "0.05"} == set(summary.kappa_hat)
    for f in ("config.yaml", "summary.json", "metrics.parquet", "loss.png",
              "gamma_per_epoch.png", "r_distribution.png", "distance.png", "final_state.pt"):
        assert (out / f).is_file(), f
    assert not list(tmp_path.glob(".*partial*"))


def test_store_and_replay_agree_and_runs_are_deterministic(tmp_path):
    sections = {"model": {"dropout": 0.1}, "optim": OPTIMS["momentum"]}
    out_a, s_a = _run(tmp_path, "a", **sections)
    out_b, s_b = _run(tmp_path, "b", **sections)
    out_r, s_r = _run(tmp_path, "r", record={"mode": "replay"}, **sections)
    ta, tb, tr = (pd.read_parquet(o / "metrics.parquet") for o in (out_a, out_b, out_r))
    pd.testing.assert_frame_equal(ta, tb, check_exact=True)  # same seed, same run
    xa, xb = TrajectoryStore(out_a / "trajectory"), TrajectoryStore(out_b / "trajectory")
    assert all(np.array_equal(xa.row(t), xb.row(t)) for t in range(xa.rows))
    pd.testing.assert_frame_equal(ta, tr, check_exact=True)  # store == replay, bit for bit
    for key in ("gamma_hat", "kappa_hat", "window", "full_loss", "bound", "r_quantiles"):
        assert getattr(s_a, key) == getattr(s_r, key), key
    assert not (out_r / "trajectory").exists()


def test_loss_gap_uses_the_steps_own_batch_mode_and_masks(tmp_path):
    """l_t(x_t), re-evaluated from the stored x_t, equals the loss training saw (dropout and
    train-mode batch norm included), and evaluating at x* leaves no trace in the model."""
    out, _ = _run(tmp_path, model={"dropout": 0.3})
    cfg = read_config(out).run
    data = load_data(cfg.data)
    table = pd.read_parquet(out / "metrics.parquet")
    store = TrajectoryStore(out / "trajectory")
    model, _, _ = build(cfg, data)
    with torch.no_grad():
        for step, _, idx in batches(cfg, data):
            if step % 7 == 0:
                load_flat(cfg, model, store.row(step))
                assert minibatch_loss(cfg, model, data, idx, step).item() == table["loss"][step]
    # replay evaluates at x* during training; its model must end exactly where training did
    out_r, _ = _run(tmp_path, "r", model={"dropout": 0.3}, record={"mode": "replay"})
    off, _ = _run(tmp_path, "off", model={"dropout": 0.3}, record={"mode": "off"})
    s_off, s_r = (torch.load(o / "final_state.pt") for o in (off, out_r))
    assert s_off.keys() == s_r.keys()
    assert all(torch.equal(s_off[k], s_r[k]) for k in s_off)  # BN running stats included


def test_replay_detects_a_run_it_cannot_reproduce(tmp_path):
    out, summary = _run(tmp_path, record={"mode": "replay"})
    cfg = read_config(out).run
    table = pd.read_parquet(out / "metrics.parquet")
    log = TrainLog(loss=table["loss"].tolist(), epoch=table["epoch"].tolist(),
                   lr=table["lr"].tolist(), full_loss=summary.full_loss,
                   epoch_ends=summary.epoch_ends)
    state = torch.load(out / "final_state.pt")
    name = next(k for k in state if k.endswith("weight"))
    state[name] = state[name].clone()
    state[name].view(-1)[0] = torch.nextafter(state[name].view(-1)[0], torch.tensor(1.0))
    with pytest.raises(ReplayMismatch, match="bit for bit"):
        measure_replay(cfg, load_data(cfg.data), log, state, log.steps)
    log.loss[5] += 1e-9  # a recorded loss the replay will not see
    with pytest.raises(ReplayMismatch, match="step 5"):
        measure_replay(cfg, load_data(cfg.data), log, torch.load(out / "final_state.pt"),
                       log.steps)


def test_divergence_is_marked_and_analysed_up_to_the_step(tmp_path):
    out, summary = _run(tmp_path, model={"norm": "none", "activation": "identity"},
                        optim={"name": "sgd", "lr": 50.0}, train={"epochs": 5})
    assert summary.diverged is True
    t = summary.diverged_step
    assert isinstance(t, int) and 0 < t < 40
    assert summary.n_steps == t and summary.reference_step == t - 1
    # x* = x_{t-1} is already far worse than x_0: no converging phase, no gamma
    assert summary.f_star > summary.full_loss[0] and summary.window == [0, 0]
    assert np.isnan(summary.gamma_hat["0.05"]) and summary.trained is False
    assert read_json(out / "summary.json")["diverged_step"] == t


def test_analyze_recomputes_with_other_options(tmp_path):
    for mode in ("store", "replay"):
        out, first = _run(tmp_path, mode, record={"mode": mode}, train={"epochs": 4})
        again = analyze(out)
        assert again.gamma_hat == first.gamma_hat
        other = analyze(out, eps=[0.0, 0.1], delta=0.0, window=(2, 20))
        assert other.window == [2, 20] and set(other.gamma_hat) == {"0.0", "0.1"}
        assert other.options["delta"] == 0.0
        assert read_json(out / "summary.json")["window"] == [2, 20]
        best = analyze(out, reference="best")
        assert best.reference_step in best.epoch_ends
        if mode == "store":
            best_store = best
    assert best.gamma_hat == pytest.approx(best_store.gamma_hat, rel=1e-9)


def test_segmentation_run_reports_pixel_loss_and_mean_iou(tmp_path):
    out, summary = _run(tmp_path, data={"name": "shapes", "subset": 96, "batch_size": 16,
                                        "resize": 16},
                        model={"name": "unet", "width": 0.25, "norm": "batch"},
                        optim={"name": "adam", "lr": 3e-3}, train={"epochs": 2})
    assert summary.task == "segmentation"
    ev = summary.evaluation
    assert 0.0 <= ev["test_mean_iou"] <= 1.0 and ev["train_loss"] > 0
    table = pd.read_parquet(out / "metrics.parquet")
    D = np.append(table["D"].to_numpy(), 0.0)
    assert np.max(np.abs(identity_residual(D, table["a"], table["s"], table["lr"]))) \
        <= 1e-10 * D.max()
    assert np.isfinite(summary.gamma_hat["0.05"])
    # classification runs report accuracy instead
    _, cls = _run(tmp_path, "cls")
    assert "test_accuracy" in cls.evaluation and "test_mean_iou" not in cls.evaluation


def test_scheduled_lr_is_each_steps_eta(tmp_path):
    from trajreg.train.optim import lr_factor

    out, _ = _run(tmp_path, optim={"name": "nesterov", "lr": 0.05, "schedule": "warmup_cosine"})
    table = pd.read_parquet(out / "metrics.parquet")
    cfg = read_config(out).run
    f = lr_factor(cfg.optim, len(table), 512 // 64)
    assert table["lr"].tolist() == pytest.approx([0.05 * f(t) for t in range(len(table))],
                                                 rel=1e-12)
    D = np.append(table["D"].to_numpy(), 0.0)
    assert np.max(np.abs(identity_residual(D, table["a"], table["s"], table["lr"]))) \
        <= 1e-10 * D.max()


def test_step_losses_leave_the_evaluation_copy_s_batch_norm_buffers_alone(tmp_path):
    """l_t(x*) normalises with each minibatch's statistics without updating the copy's
    running ones: the values are those of a tracking train-mode forward bit for bit, and
    F(x*) evaluated afterwards sees the trained model's buffers however many steps were
    evaluated before it."""
    import copy

    from trajreg.run.runner import RunContext

    cfg = load_config(tiny(model={"norm": "batch"}, train={"epochs": 2, "threads": 1}))
    data = load_data(cfg.data)
    model, opt, sched = build(cfg, data)
    log = train(cfg, data, model, opt, sched, progress=False)
    ctx = RunContext(cfg, data, log, model, model.state_dict(), tmp_path)
    before = {k: v.clone() for k, v in ctx.star.state_dict().items()}
    steps = list(range(0, log.steps, 3))
    got = ctx.step_losses(steps)
    assert all(torch.equal(v, before[k]) for k, v in ctx.star.state_dict().items())
    assert all(m.track_running_stats for m in ctx.star.modules()
               if isinstance(m, torch.nn.BatchNorm1d))
    tracking = copy.deepcopy(model)
    want = {}
    with torch.no_grad():
        for step, _, idx in batches(cfg, data):
            if step in steps:
                want[step] = minibatch_loss(cfg, tracking, data, idx, step).item()
    assert got.tolist() == [want[t] for t in steps]
    assert ctx.full_loss_of(ctx.star) == ctx.full_loss_of(model)
