"""run/analysis.py on constructed logs and measurements (no training)."""

import math

import numpy as np
import pytest

from trajreg import principle as P
from trajreg.record.measured import Measured
from trajreg.run import analysis
from trajreg.run.summary import Summary
from trajreg.train.loop import TrainLog


def _log(T=40, per_epoch=10, diverged=None):
    rng = np.random.default_rng(0)
    loss = list(np.linspace(2.0, 0.2, T) + 0.01 * rng.standard_normal(T))
    ends = list(range(per_epoch, T + 1, per_epoch))
    full = [2.1, *np.linspace(1.5, 0.15, len(ends))]
    return TrainLog(loss=loss, epoch=[t // per_epoch + 1 for t in range(T)],
                    lr=[0.1] * T, full_loss=full, epoch_ends=ends, diverged_step=diverged)


def _measured(log, steps=None, k=None):
    rng = np.random.default_rng(1)
    T = log.steps
    steps = np.arange(T) if steps is None else np.asarray(steps)
    n = len(steps)
    return Measured(steps=steps, D=rng.uniform(1, 2, n), a=rng.uniform(0.5, 1.5, n),
                    s=rng.uniform(0.1, 1, n), lr=np.full(n, 0.1),
                    loss_star=np.asarray(log.loss)[steps] - rng.uniform(0.1, 1, n),
                    f_star=log.full_loss[-1], reference_step=T if k is None else k)


OPTIONS = analysis.AnalysisOptions()
FACTS = analysis.RunFacts(n_params=10, task="classification")


def test_step_table_places_full_loss_on_epoch_ends_and_keeps_sampled_step_numbers():
    log = _log()
    m = _measured(log, steps=[0, 9, 13, 29, 39])
    table = analysis.step_table(log, m)
    assert table["step"].tolist() == [0, 9, 13, 29, 39]
    assert table["loss"].tolist() == [log.loss[t] for t in (0, 9, 13, 29, 39)]
    full = table["full_loss"].to_numpy()
    assert full[1] == log.full_loss[1] and full[3] == log.full_loss[3] and np.isnan(full[2])
    assert np.allclose(table["b"], np.asarray(log.loss)[m.steps] - m.loss_star)


def test_summary_gamma_is_the_principle_estimate_over_the_window_steps():
    log = _log()
    m = _measured(log)
    table, summary = analysis.analyse(log, m, mode="store", reference="final",
                                      options=OPTIONS, facts=FACTS)
    start, end = summary.window
    w = slice(start, end)
    b = np.asarray(log.loss) - m.loss_star
    want = P.gamma_hat(m.a[w], b[w], m.s[w], P.default_delta(m.lr[w]), 0.05)
    assert summary.gamma(0.05) == want
    assert set(summary.sensitivity["gamma_hat"]) == {"0.0", "0.05", "0.1"}
    assert summary.sensitivity["gamma_hat"]["0.05"] == want
    assert summary.sensitivity["reference_best"] is None  # no best measurement given
    assert summary.trained and summary.format == 2


def test_a_sampled_window_uses_only_the_sampled_steps_in_it():
    log = _log()
    steps = np.arange(0, 40, 3)
    m = _measured(log, steps=steps)
    table, summary = analysis.analyse(log, m, mode="store", reference="final",
                                      options=OPTIONS, facts=FACTS)
    start, end = summary.window
    inside = (steps >= start) & (steps < end)
    b = np.asarray(log.loss)[steps] - m.loss_star
    assert summary.gamma(0.0) == P.gamma_hat(m.a[inside], b[inside], m.s[inside],
                                             P.default_delta(m.lr[inside]), 0.0)
    assert summary.bound is None  # the bound telescopes over consecutive steps only


def test_record_mode_off_has_no_analysis_keys():
    log = _log()
    table, summary = analysis.analyse(log, None, mode="off", reference="final",
                                      options=OPTIONS, facts=FACTS)
    assert not summary.analysed and "gamma_hat" not in summary.to_dict()
    assert table["D"].isna().all() and len(table) == log.steps


def test_a_diverged_run_no_better_than_its_start_has_an_empty_window():
    log = _log(diverged=39)
    m = _measured(log, k=38)
    m.f_star = 50.0  # x* already far worse than x_0
    _, summary = analysis.analyse(log, m, mode="store", reference="final",
                                  options=OPTIONS, facts=FACTS)
    assert summary.window == [0, 0] and math.isnan(summary.gamma(0.05))
    assert summary.diverged and not summary.trained


def test_summary_round_trips_and_names_a_missing_key(tmp_path):
    log = _log()
    _, summary = analysis.analyse(log, _measured(log), mode="store", reference="final",
                                  options=OPTIONS, facts=FACTS)
    raw = summary.to_dict()
    assert Summary.from_dict(raw) == summary
    del raw["final_loss"]
    with pytest.raises(Exception, match="final_loss"):
        Summary.from_dict(raw)


def test_trained_margin():
    from trajreg.run.summary import trained

    assert trained([2.3, 1.0], False) and not trained([2.3, 2.28], False)
    assert not trained([2.3, 0.1], True) and not trained([2.3], False)
    assert not trained([2.3, float("nan")], False)
