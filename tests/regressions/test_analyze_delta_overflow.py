"""Issue 20: ``trajreg analyze RUN --delta 1e308`` printed numpy overflow warnings and
died in matplotlib's tick arithmetic (an internal error). delta is on the learning
rate's scale (a float32): --delta and ``analysis.delta`` above float32's largest value
are one-line errors, and the figures draw values beyond +-PLOT_LIMIT as infinities
(with a mark or a note), without a warning."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny
from trajreg import cli
from trajreg.errors import ConfigError
from trajreg.run.figures import write_figures
from trajreg.train.config import load_config


@pytest.mark.parametrize("value", ["1e308", "3.5e38"])
def test_a_delta_above_float32_is_a_usage_error(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["analyze", str(tmp_path / "r"), "--delta", value])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "trajreg analyze: error: argument --delta: must be at most 3.403e+38 (delta is on "
        f"the scale of the learning rate, a float32), got '{value}'\n")
    with pytest.raises(ConfigError, match=r"^analysis\.delta: must be at most 3\.403e\+38"):
        load_config(tiny(analysis={"delta": float(value)}))


def test_figures_draw_huge_values_without_errors_or_warnings(tmp_path):
    n = 40
    table = pd.DataFrame({"step": np.arange(n), "loss": np.full(n, 1e308),
                          "r": -1e308 * np.linspace(0.5, 1.0, n), "D": np.full(n, 1e308),
                          "rsi": np.full(n, 1e305), "eb": np.full(n, 1e306)})
    summary = {"window": [0, n], "full_loss": [2.0, 1e308], "epoch_ends": [n],
               "gamma_hat": {"0.0": -1.7e308, "0.05": -1e307},
               "gamma_hat_per_epoch": {"0.0": [-1.7e308], "0.05": [-1e307]},
               "gamma_bar_per_epoch": [1e307], "mu_hat": {"0.0": 1e304},
               "L_hat": {"0.0": 1e304},
               "mli": {"alpha": [0.0, 0.5, 1.0], "loss": [1.0, 1e308, 0.5],
                       "monotone": False, "max_bump": 1e308}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_figures(tmp_path, table, json.loads(json.dumps(summary)))
    assert len(paths) == 6 and all(p.stat().st_size > 0 for p in paths)
