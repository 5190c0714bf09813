"""Every record mode on the GPT (character-level text, pydoc's corpus), end to end through
the runner, with dropout 0.1, gradient clipping at 1 and 2 micro-batches a step, so the
random state of each micro-batch, the clipped update and the accumulated gradient are all
part of what is reproduced.

- replay re-executes the run and checks its own bitwise reproduction (``ReplayMismatch``
  otherwise); its metrics.parquet equals store's column by column, exactly;
- sample measures exactly at its kept steps: store's rows there, bit for bit; its
  summary's gamma_hat_ci holds store's exact gamma_hat;
- sketch (k = 4096 of the model's d, a real sketch) keeps the losses exactly, its exact
  check sample equals store's rows, and its summary's sketch_error says how far the
  sketched a_t, D_t are (measured here: a median 1.2%, D median 1.2%).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajreg.run import rundir
from trajreg.run.runner import run
from trajreg.train.config import load_config

pytestmark = [
    pytest.mark.slow,
    # the sample of a 32-step run is too small for a two-sided interval: said, and expected
    pytest.mark.filterwarnings("ignore:record.sample_rate:UserWarning"),
    pytest.mark.filterwarnings("ignore:insufficient samples:UserWarning"),
]

CONFIG = {
    "seed": 0,
    "data": {"name": "text", "batch_size": 16, "subset": 256},
    "model": {"name": "gpt", "depth": 2, "width": 32, "heads": 2, "block_size": 32,
              "norm": "layer", "dropout": 0.1},
    "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.1,
              "decay_exclude": ["norm", "bias"], "warmup_steps": 10},
    "train": {"epochs": 2, "grad_clip": 1.0, "accumulate": 2, "threads": 1},
}
STEPS = 2 * 256 // 16
SKETCH_DIM = 4096
RECORDS = {
    "store": {"mode": "store", "gradients": False},
    "replay": {"mode": "replay"},
    # 16 of 32 steps on average: a real sample of a short run
    "sample": {"mode": "sample", "sample_min_steps": 16},
    "sketch": {"mode": "sketch", "sketch_dim": SKETCH_DIM},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt-modes")
    out = {}
    for name, record in RECORDS.items():
        path, summary = run(load_config({**CONFIG, "record": record}), root / name,
                            figures=False, progress=False)
        out[name] = (path, summary, pd.read_parquet(path / rundir.METRICS))
    return out


def _within(value: float, interval: list[float | None]) -> bool:
    low, high = interval
    return (low is None or low <= value) and (high is None or value <= high)


def test_replay_equals_store_bit_for_bit(runs):
    _, store, want = runs["store"]
    path, replay, got = runs["replay"]
    assert len(want) == STEPS and list(got.columns) == list(want.columns)
    for column in want.columns:
        np.testing.assert_array_equal(got[column].to_numpy(), want[column].to_numpy(),
                                      err_msg=column)
    for key in ("gamma_hat", "kappa_hat", "gamma_bar", "window", "full_loss", "f_star",
                "r_quantiles", "bound"):
        assert getattr(replay, key) == getattr(store, key), key
    assert not (path / "trajectory").exists()  # replay keeps no iterates
    assert store.full_loss[-1] < store.full_loss[0] - 1.0 and store.trained


def test_sample_is_store_at_its_kept_steps(runs):
    _, store, want = runs["store"]
    _, sample, got = runs["sample"]
    kept = got["step"].to_numpy()
    assert 5 <= len(kept) < STEPS  # a real sample
    rows = want.set_index("step").loc[kept]
    for column in ("lr", "loss", "loss_star", "D", "a", "s", "b"):
        np.testing.assert_array_equal(got[column].to_numpy(), rows[column].to_numpy(),
                                      err_msg=column)
    assert sample.n_sampled_window is not None and sample.n_sampled_window > 0
    assert set(sample.gamma_hat_ci) == set(store.gamma_hat) == {"0.0", "0.05"}
    for eps, interval in sample.gamma_hat_ci.items():
        assert _within(store.gamma_hat[eps], interval), (eps, interval, store.gamma_hat)


def test_sketch_is_measured_with_its_own_error(runs):
    _, store, want = runs["store"]
    path, sketch, got = runs["sketch"]
    meta = (path / "trajectory" / "sample.json").read_text()
    assert f'"sketch_dim": {SKETCH_DIM}' in meta and '"identity": false' in meta
    assert SKETCH_DIM < _parameters()  # a real sketch
    assert got["step"].tolist() == want["step"].tolist()
    for column in ("lr", "loss", "loss_star", "b"):  # evaluated, not sketched
        np.testing.assert_array_equal(got[column], want[column], err_msg=column)
    check = np.flatnonzero(np.isfinite(got["a_exact"].to_numpy()))
    assert len(check) >= 5
    for column in ("a", "D"):  # the exact check sample: store's values
        np.testing.assert_array_equal(got[f"{column}_exact"].to_numpy()[check],
                                      want[column].to_numpy()[check], err_msg=column)
    err = sketch.sketch_error
    assert err["n"] == len(check)
    assert 0 < err["a_median_rel"] < 0.1 and 0 < err["D_median_rel"] < 0.1
    assert set(err["gamma_rel"]) == {"0.05"}
    assert set(sketch.gamma_hat_ci) == {"0.0", "0.05"}
    for eps, interval in sketch.gamma_hat_ci.items():
        assert _within(store.gamma_hat[eps], interval), (eps, interval, store.gamma_hat)


def _parameters() -> int:
    from trajreg.train.data import load_data
    from trajreg.train.loop import build

    cfg = load_config({**CONFIG, "record": RECORDS["store"]})
    model, _, _ = build(cfg, load_data(cfg.data, block_size=cfg.model.block_size))
    return sum(p.numel() for p in model.parameters())
