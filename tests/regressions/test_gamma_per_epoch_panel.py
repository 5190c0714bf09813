"""The gamma-per-epoch panel of a comparison used a symlog axis that flattened 0.6-1.0,
fractional epoch ticks, and dropped -inf epochs silently."""

from __future__ import annotations

import math

from tests.study.fakes import fake_study, first_comparison, small_raw, tick_labels
from trajreg.study.figures import comparison_figure
from trajreg.study.spec import load_study


def test_linear_integer_epochs_and_marked_minus_inf(tmp_path):
    study = load_study(small_raw(seeds=[0, 1, 2]))
    fake_study(tmp_path, study, per_epoch=[0.62, 0.75, -math.inf], epochs=3)
    comp, summaries, _ = first_comparison(tmp_path, study)
    fig = comparison_figure(comp, summaries, "0.05", tmp_path / "c.png")
    ax = fig.axes[1]
    assert ax.get_yscale() == "linear"
    low, high = ax.get_ylim()
    assert low > 0.5 and high < 0.9  # the axis is spent on 0.62-0.75, not on -inf
    assert all(float(t).is_integer() for t in tick_labels(fig, ax, "x"))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("-inf" in t for t in legend), legend
    # the -inf epochs are drawn as markers at the bottom edge
    marked = [line for line in ax.get_lines() if line.get_marker() == "v"
              and len(line.get_xdata())]
    assert sum(len(line.get_xdata()) for line in marked) == 6  # epoch 3 of 3 seeds x 2
