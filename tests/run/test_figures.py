"""The run figures: labelled log axes over any span, integer epochs, infinite gamma
visible, and no crash on a diverged run, an empty table or a summary without an
analysis. Real PNGs; the axes are inspected after they are drawn. (Log-axis labels
and infinite gamma: tests/regressions/test_log_axis_without_tick_labels.py and
test_infinite_gamma_vanishes_from_figure.py, which use the helpers here.)"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trajreg.run import figures


def spy_figures(monkeypatch) -> dict:
    """Every figure save_png writes, by file name (the real save_png still writes)."""
    seen = {}
    real = figures.save_png

    def spy(fig, path, dpi=100):
        seen[path.name] = fig
        real(fig, path, dpi)

    monkeypatch.setattr(figures, "save_png", spy)
    return seen


@pytest.fixture
def drawn(monkeypatch):
    return spy_figures(monkeypatch)


def _labels(ax, axis="y"):
    """The tick labels inside the view (those matplotlib actually draws)."""
    ax_ = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    return [t.get_text() for t, v in zip(ax_.get_ticklabels(), ax_.get_majorticklocs(),
                                         strict=True) if lo <= v <= hi]


def _table(n=300, lo=1e-3, hi=1e30):
    steps = np.arange(n)
    return pd.DataFrame({"step": steps, "epoch": steps // 30, "lr": 50.0,
                         "loss": np.geomspace(hi, lo, n), "D": np.geomspace(lo, hi, n),
                         "r": np.linspace(-1, 3, n)})


def _summary(**change):
    s = {"window": [0, 200], "epoch_ends": list(range(30, 301, 30)),
         "full_loss": list(np.geomspace(1e30, 1e-3, 11)),
         "gamma_hat": {"0.0": 0.5, "0.05": math.inf},
         "gamma_hat_per_epoch": {"0.0": [0.1, math.inf, 0.3, -math.inf, None, 0.2, 0.1, 0.1,
                                         0.1, 0.1]},
         "gamma_bar_per_epoch": [0.2] * 10}
    s.update(change)
    return s


def test_decade_labels_read_plainly():
    assert [figures.log_label(v) for v in (1e-12, 0.001, 0.05, 1.0, 200.0, 1e30)] == [
        "1e-12", "0.001", "0.05", "1", "200", "1e30"]


def test_diverged_run_with_an_empty_window_and_nan_gamma(tmp_path, drawn):
    summary = _summary(window=[0, 0], gamma_hat={"0.0": math.nan},
                       gamma_hat_per_epoch={"0.0": [None]}, gamma_bar_per_epoch=[None],
                       full_loss=[2.3, math.inf], epoch_ends=[30])
    paths = figures.write_figures(tmp_path, _table(n=10), summary)
    assert [p.name for p in paths] == list(figures.FIGURES) and all(p.is_file() for p in paths)
    r_ax = drawn["r_distribution.png"].axes[0]
    assert any("no finite r_t in the window [0, 0)" in t.get_text() for t in r_ax.texts)


def test_empty_table_and_summary_without_analysis(tmp_path):
    (tmp_path / "a").mkdir()
    paths = figures.write_figures(tmp_path / "a", _table(n=0), _summary(window=[0, 0]))
    assert all(p.is_file() for p in paths) and len(paths) == 4
    no_analysis = {"epoch_ends": [30], "full_loss": [2.3, 1.1]}  # record mode off
    (tmp_path / "b").mkdir()
    paths = figures.write_figures(tmp_path / "b", _table(n=30), no_analysis)
    assert [p.name for p in paths] == ["loss.png"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["loss.png"]
