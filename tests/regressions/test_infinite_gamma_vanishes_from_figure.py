"""gamma_per_epoch.png dropped epochs whose gamma_hat was +inf or -inf without a
trace (matplotlib does not draw infinite points), and its epoch axis had ticks like
2.5. Infinite values must be marked at the axis edge and named in the legend, the
epochs labelled by integers."""

from __future__ import annotations

from tests.run.test_figures import _summary, _table, spy_figures
from trajreg.run import figures


def test_epochs_are_integers_and_infinite_gamma_is_marked(tmp_path, monkeypatch):
    drawn = spy_figures(monkeypatch)
    figures.write_figures(tmp_path, _table(), _summary())
    ax = drawn["gamma_per_epoch.png"].axes[0]
    assert all(float(t).is_integer() for t in ax.xaxis.get_majorticklocs())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "gamma_hat = +inf (at the top edge)" in legend
    assert "gamma_hat = -inf (at the bottom edge)" in legend
    marks = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
    assert marks["gamma_hat = +inf (at the top edge)"] == [2.0]
    assert marks["gamma_hat = -inf (at the bottom edge)"] == [4.0]
    r_ax = drawn["r_distribution.png"].axes[0]
    assert any("gamma_hat(eps=0.05) = inf" in t.get_text() for t in r_ax.texts)
