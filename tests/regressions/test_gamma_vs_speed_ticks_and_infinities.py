"""gamma_vs_speed.png had a symlog x axis with no ticks between 0.6 and 0.9 (where the
gammas lie), and +-inf estimates sat in unlabelled columns; the gammas need readable
ticks and +-inf their own labelled columns."""

from __future__ import annotations

import math

import numpy as np

from tests.study.fakes import fake_study, first_comparison, small_raw, tick_labels
from trajreg.study.figures import correlation_figure
from trajreg.study.spec import load_study


def test_ticks_between_0_6_and_0_9_and_labelled_infinity_columns(tmp_path):
    study = load_study(small_raw(seeds=[0, 1, 2, 3, 4]))

    def gamma(axes, seed):
        if seed == 0:
            return -math.inf if axes["model.norm"] == "none" else math.inf
        return 0.6 + 0.07 * seed + (0.01 if axes["model.norm"] == "batch" else 0.0)

    fake_study(tmp_path, study, gamma=gamma)
    _, _, runs = first_comparison(tmp_path, study)
    fig = correlation_figure(runs, "0.05", tmp_path / "g.png")
    left, main, right = fig.axes
    assert main.get_xscale() == "linear"
    ticks = [float(t.replace("\u2212", "-")) for t in tick_labels(fig, main, "x")]
    assert sum(0.6 <= t <= 0.9 for t in ticks) >= 3, ticks
    assert tick_labels(fig, left, "x") == ["-inf"]
    assert tick_labels(fig, right, "x") == ["+inf"]
    # every run is drawn: finite ones in the main panel, one in each infinity column
    counts = [sum(len(c.get_offsets()) for c in ax.collections) for ax in fig.axes]
    assert counts == [1, 8, 1]
    assert np.isfinite(main.get_xlim()).all()
