"""Issue 19: sketch mode's self-check did not see a gamma-level error. On a 1.2M-parameter
CNN the sketch's gamma_hat(0.05) was 17% low while ``sketch_error`` reported a 4.9%
median error of a_t, from a check sample of 4 steps (rate 0.02 of 188 steps). Now the
check sample is sized by count (``record.sketch_check_steps``) and ``sketch_error``
compares gamma_hat of the sketched and the exact r_t on the check steps of the window,
warning above 10% with how to raise the sketch's k.

A 1.08M-parameter MLP on digits (66 steps) with a sketch far too small (k = 16, forced):
its gamma_hat(0.05) is about 30% off, and the check must say so."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny
from trajreg.principle import default_delta, gamma_hat
from trajreg.run.runner import run
from trajreg.train.config import load_config


@pytest.mark.slow
def test_the_check_reports_and_warns_a_gamma_level_error(tmp_path, one_thread):
    cfg = load_config(tiny(
        seed=1, data={"subset": None, "batch_size": 64},
        model={"depth": 3, "width": 1000, "norm": "none"},  # d = 1 076 010
        optim={"name": "momentum", "lr": 0.02}, train={"epochs": 3},
        record={"mode": "sketch", "sketch_dim": 16, "gradients": False,
                "interpolation": False}))
    with pytest.warns(UserWarning, match=r"sketch_error: .* gamma_hat\(0\.05\) is .*% off "
                                         r"the exact value.*Raise record\.sketch_dim"):
        out, summary = run(cfg, tmp_path / "r", figures=False, progress=False)
    assert summary.n_params > 1_000_000
    T = summary.n_steps
    err = summary.sketch_error
    # sized by count: a run shorter than the default 100 check steps is checked at every
    # step (the old rate 0.02 checked about 1 of these 66)
    assert err["n"] == T == 66
    lo, hi = summary.window
    assert err["n_window"] == hi - lo
    # the figure is what it says: the sketch's gamma_hat against the exact one, on the
    # same steps (here the whole window, so it is the run's own error)
    table = pd.read_parquet(out / "metrics.parquet")
    w = slice(lo, hi)
    b, s = table["b"].to_numpy()[w], table["s"].to_numpy()[w]
    delta = default_delta(table["lr"].to_numpy())[w]
    exact = gamma_hat(table["a_exact"].to_numpy()[w], b, s, delta, 0.05)
    sketched = gamma_hat(table["a"].to_numpy()[w], b, s, delta, 0.05)
    assert sketched == summary.gamma_hat["0.05"]
    assert math.isclose(err["gamma_rel"]["0.05"], abs(sketched - exact) / abs(exact))
    assert err["gamma_rel"]["0.05"] > 0.10
    assert np.isfinite(err["a_rel_at_quantile"]["0.05"])
    assert err["a_rel_at_quantile"]["0.05"] > 0.10
