"""A diverged run vanished from its comparison plot (its non-finite loss left a gap in
the mean); it must be drawn up to its divergence and marked."""

from __future__ import annotations

import math

from tests.study.fakes import fake_run, first_comparison, loss_curve, small_raw
from trajreg.study.figures import comparison_figure
from trajreg.study.layout import write_study_file
from trajreg.study.spec import load_study


def test_diverged_seed_is_marked(tmp_path):
    study = load_study(small_raw(seeds=[0, 1]))
    write_study_file(tmp_path, study.raw)
    for rid, axes, seed in study.blocks[0].members:
        if axes["model.norm"] == "none" and seed == 1:
            fake_run(tmp_path, rid, 0.5, full_loss=[*loss_curve(0.1)[:-1], math.inf],
                     diverged=True)
        else:
            fake_run(tmp_path, rid, 0.5)
    comp, summaries, _ = first_comparison(tmp_path, study)
    fig = comparison_figure(comp, summaries, "0.05", tmp_path / "c.png")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("seed 1: diverged" in t for t in legend), legend
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_xdata()[0] == 2  # last finite epoch
