"""loss.png and distance.png of a run at lr 50 (D from 1e-3 to 1e30) had a log axis
with no tick labels (a 1-2-5 LogLocator over 33 decades): every log axis must show
a few labelled ticks, over many decades and within one."""

from __future__ import annotations

import pytest

from tests.run.test_figures import _labels, _summary, _table, spy_figures
from trajreg.run import figures


@pytest.mark.parametrize("lo, hi", [(1e-3, 1e30), (1e-12, 2.0), (0.05, 0.5), (0.3, 0.9)])
def test_log_axes_have_labelled_ticks(tmp_path, monkeypatch, lo, hi):
    drawn = spy_figures(monkeypatch)
    figures.write_figures(tmp_path, _table(lo=lo, hi=hi), _summary(full_loss=[hi, lo]))
    for name in ("loss.png", "distance.png"):
        ax = drawn[name].axes[0]
        assert ax.get_yscale() == "log"
        labels = _labels(ax)
        assert 2 <= len(labels) <= 12 and all(labels), (name, labels)
