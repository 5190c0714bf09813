"""Log axes spanning many decades (a loss falling from 2 to 1e-12) had no tick labels
in the study figures; every log axis must have labelled ticks."""

from __future__ import annotations

from tests.study.fakes import fake_study, first_comparison, small_raw, tick_labels
from trajreg.study.figures import comparison_figure, log_ticks
from trajreg.study.spec import load_study


def test_loss_axis_over_twelve_decades_is_labelled(tmp_path):
    study = load_study(small_raw(seeds=[0, 1]))
    fake_study(tmp_path, study, final=1e-12)
    comp, summaries, _ = first_comparison(tmp_path, study)
    fig = comparison_figure(comp, summaries, "0.05", tmp_path / "c.png")
    ax_loss = fig.axes[0]
    assert ax_loss.get_yscale() == "log"
    labels = tick_labels(fig, ax_loss)
    assert 3 <= len(labels) <= 10, labels


def test_tick_choice():
    assert log_ticks(1e-12, 2.0) == [1e-12, 1e-10, 1e-08, 1e-06, 0.0001, 0.01, 1.0]
    assert log_ticks(0.05, 0.5) == [0.05, 0.1, 0.2, 0.5]
