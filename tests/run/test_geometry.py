"""Trajectory geometry in a run: the metrics columns (rsi, eb, cos_g, cos_v), the summary
keys (mu_hat, L_hat, rsi_eb_ratio, cos_g_positive, cos_v_positive, path_ratio, mli),
the figures, re-analysis. The formulas are tested in tests/principle; here the wiring:
each column and key is the principle function applied to the stored rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from tests.linear_loop import linear_problem, mse, train_with_session
from trajreg import principle as P
from trajreg.record import TrajectoryStore
from trajreg.record.geometry import GRADIENTS
from trajreg.record.measured import Measured
from trajreg.run import analysis, figures
from trajreg.run.runner import analyze, run
from trajreg.run.summary import Summary, read_summary, write_summary
from trajreg.train.config import load_config
from trajreg.train.loop import TrainLog

OPTIONS = analysis.AnalysisOptions()
FACTS = analysis.RunFacts(n_params=10, task="classification")


def _log(T=40, per_epoch=10):
    rng = np.random.default_rng(0)
    loss = list(np.linspace(2.0, 0.2, T) + 0.01 * rng.standard_normal(T))
    ends = list(range(per_epoch, T + 1, per_epoch))
    return TrainLog(loss=loss, epoch=[t // per_epoch + 1 for t in range(T)], lr=[0.1] * T,
                    full_loss=[2.1, *np.linspace(1.5, 0.15, len(ends))], epoch_ends=ends)


def _measured(log, steps=None, gradients=True):
    rng = np.random.default_rng(1)
    steps = np.arange(log.steps) if steps is None else np.asarray(steps)
    n = len(steps)
    columns = ({"g_dot": rng.uniform(-1.0, 1.5, n), "g_norm2": rng.uniform(0.1, 1, n)}
               if gradients else {})
    return Measured(steps=steps, D=rng.uniform(1, 2, n), a=rng.uniform(-0.1, 1.5, n),
                    s=rng.uniform(0.1, 1, n), lr=np.full(n, 0.1),
                    loss_star=np.asarray(log.loss)[steps] - rng.uniform(0.1, 1, n),
                    f_star=log.full_loss[-1], reference_step=log.steps, columns=columns)


@pytest.mark.parametrize("steps", [None, [0, 3, 9, 13, 17, 21, 29, 33, 39]])
def test_columns_and_keys_are_the_principle_functions(steps):
    log = _log()
    m = _measured(log, steps)
    table, summary = analysis.analyse(log, m, mode="store", reference="final",
                                      options=OPTIONS, facts=FACTS)
    D, a, s = m.D, m.a, m.s
    g_dot, g_norm2 = m.columns["g_dot"], m.columns["g_norm2"]
    assert np.array_equal(table["rsi"], P.rsi(g_dot, D))
    assert np.array_equal(table["eb"], P.eb(g_norm2, D))
    assert np.array_equal(table["cos_g"], P.cos_g(g_dot, D, g_norm2), equal_nan=True)
    assert np.array_equal(table["cos_v"], P.cos_v(a, D, s), equal_nan=True)
    assert np.array_equal(table["cos_v"], table["c"], equal_nan=True)
    start, end = summary.window
    w = (table["step"] >= start).to_numpy() & (table["step"] < end).to_numpy()
    assert w.sum() > 0
    for e in OPTIONS.eps:
        key = str(float(e))
        mu, L = P.mu_hat(table["rsi"][w], e), P.L_hat(table["eb"][w], e)
        assert summary.mu_hat[key] == mu and summary.L_hat[key] == L
        assert summary.rsi_eb_ratio[key] == P.rsi_eb_ratio(mu, L)
    assert summary.cos_g_positive == P.fraction_positive(table["cos_g"][w])
    assert summary.cos_v_positive == P.fraction_positive(table["cos_v"][w])
    assert 0 < summary.cos_g_positive < 1  # some g_dot < 0 were drawn


def test_without_gradients_only_the_update_cosine():
    log = _log()
    table, summary = analysis.analyse(log, _measured(log, gradients=False), mode="store",
                                      reference="final", options=OPTIONS, facts=FACTS)
    assert "cos_v" in table and not {"rsi", "eb", "cos_g"} & set(table.columns)
    assert summary.cos_v_positive is not None and summary.mu_hat is None
    assert summary.L_hat is summary.cos_g_positive is summary.rsi_eb_ratio is None
    assert "mu_hat" not in summary.to_dict()
    # record mode off: nothing measured, no geometry
    table, summary = analysis.analyse(log, None, mode="off", reference="final",
                                      options=OPTIONS, facts=FACTS)
    assert summary.cos_v_positive is None and table["cos_v"].isna().all()


def test_summary_geometry_keys_round_trip(tmp_path):
    log = _log()
    m = _measured(log)
    m.summary = {"path_ratio": 1.7, "mli": {"alpha": [0.0, 1.0], "loss": [2.0, math.inf],
                                           "monotone": False, "max_bump": math.nan}}
    _, summary = analysis.analyse(log, m, mode="store", reference="final", options=OPTIONS,
                                  facts=FACTS)
    summary.cos_g_positive = math.nan
    write_summary(tmp_path, summary)
    back = read_summary(tmp_path)
    assert back.path_ratio == 1.7 and back.mli["loss"] == [2.0, math.inf]
    assert back.mli["max_bump"] is None and math.isnan(back.cos_g_positive)
    assert back.mu_hat == summary.mu_hat and back.L_hat == summary.L_hat
    assert Summary.from_dict({k: v for k, v in summary.to_dict().items()
                              if k not in ("mu_hat", "mli")}).mli is None


def test_figures_drawn_only_when_present(tmp_path):
    log = _log()
    table, summary = analysis.analyse(log, _measured(log, gradients=False), mode="store",
                                      reference="final", options=OPTIONS, facts=FACTS)
    for sub in "abc":
        (tmp_path / sub).mkdir()
    names = [p.name for p in figures.write_figures(tmp_path / "a", table, summary.to_dict())]
    assert names == list(figures.FIGURES)
    m = _measured(log)
    m.summary = {"path_ratio": 1.2, "mli": {"alpha": [0.0, 0.5, 1.0], "loss": [2.0, 2.5, 1.0],
                                           "monotone": False, "max_bump": 0.5}}
    table, summary = analysis.analyse(log, m, mode="store", reference="final",
                                      options=OPTIONS, facts=FACTS)
    paths = figures.write_figures(tmp_path / "b", table, summary.to_dict())
    assert [p.name for p in paths] == [*figures.FIGURES, *figures.GEOMETRY_FIGURES]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    # nan and inf ratios (D_t = 0 at the reference, an infinite loss) draw without error
    table.loc[3, "rsi"], table.loc[4, "eb"] = math.nan, math.inf
    figures._geometry(tmp_path / "c" / "geometry.png", table, summary.to_dict(), (0, 0))
    figures.mli_figure(tmp_path / "c" / "mli.png", {"mli": {
        "alpha": [0.0, 1.0], "loss": [math.inf, 1.0], "monotone": False, "max_bump": None}})
    assert (tmp_path / "c" / "mli.png").is_file()


# ------------------------------------------------------------------ a real run

CONFIG = tiny(model={"width": 16, "norm": "batch"}, train={"epochs": 3, "threads": 1},
              record={"mode": "store", "gradients": True})


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    out, summary = run(load_config(CONFIG), tmp_path_factory.mktemp("geo") / "run",
                       progress=False)
    return out, summary


@pytest.mark.slow
def test_real_run_columns_and_keys_from_the_stored_rows(stored):
    out, summary = stored
    table = pd.read_parquet(out / "metrics.parquet")
    xs, gs = TrajectoryStore(out / "trajectory"), TrajectoryStore(out / "trajectory" / GRADIENTS)
    T = summary.n_steps
    rows, grads = xs.read(0, T + 1).astype(np.float64), gs.read(0, T)
    x_star = rows[T]
    q = P.gradient_quantities(rows[:T], grads, x_star)
    np.testing.assert_allclose(table["g_dot"], q.g_dot, rtol=1e-13)
    np.testing.assert_allclose(table["g_norm2"], q.g_norm2, rtol=1e-13)
    np.testing.assert_allclose(table["rsi"], P.rsi(q.g_dot, q.D), rtol=1e-13)
    np.testing.assert_allclose(table["eb"], P.eb(q.g_norm2, q.D), rtol=1e-13)
    np.testing.assert_allclose(table["cos_g"], P.cos_g(q.g_dot, q.D, q.g_norm2), rtol=1e-13)
    u = np.linalg.norm(rows[:-1] - rows[1:], axis=1)
    want = P.path_ratio(u, np.linalg.norm(rows[0] - x_star))
    assert summary.path_ratio == pytest.approx(want, rel=1e-12) and summary.path_ratio > 1
    w = slice(*summary.window)
    assert summary.mu_hat["0.05"] == P.mu_hat(table["rsi"][w], 0.05)
    assert (out / "geometry.png").is_file() and (out / "mli.png").is_file()


@pytest.mark.slow
def test_interpolation_ends_are_the_runs_own_F0_and_F_star(stored, tmp_path):
    """Batch norm: x_0's running statistics are rebuilt from the seed, interpolated like
    the parameters, so alpha = 0 is F_0's model and alpha = 1 the trained one, exactly.
    Replay mode's interpolation (its own x_0, from the seed) is the same."""
    out, summary = stored
    mli = summary.mli
    assert mli["alpha"] == P.mli_alphas(21).tolist() and len(mli["loss"]) == 21
    assert mli["loss"][0] == summary.full_loss[0]
    assert mli["loss"][-1] == summary.full_loss[-1] == summary.f_star
    m = P.mli_summary(mli["alpha"], mli["loss"])
    assert mli["monotone"] == m.monotone and mli["max_bump"] == m.max_bump
    # a middle point really moves the buffers: evaluating it with x_0's buffers differs
    assert mli["loss"][10] not in (mli["loss"][0], mli["loss"][-1])
    _, replayed = run(load_config({**CONFIG, "record": {"mode": "replay", "gradients": True}}),
                      tmp_path / "replay", figures=False, progress=False)
    assert replayed.mli["loss"] == mli["loss"] and replayed.path_ratio == pytest.approx(
        summary.path_ratio, rel=1e-12)
    assert replayed.mu_hat == pytest.approx(summary.mu_hat, rel=1e-12)


@pytest.mark.slow
def test_reanalysis_keeps_the_path_and_recomputes_the_window_keys(stored, tmp_path):
    import shutil

    out, summary = stored
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    again = analyze(copy, eps=[0.0, 0.1], progress=False)
    assert set(again.mu_hat) == {"0.0", "0.1"} == set(again.L_hat)
    assert again.mli == summary.mli and again.path_ratio == summary.path_ratio
    assert again.mu_hat["0.0"] == summary.mu_hat["0.0"]
    table = pd.read_parquet(copy / "metrics.parquet")
    before = pd.read_parquet(out / "metrics.parquet")
    pd.testing.assert_frame_equal(table[["rsi", "eb", "cos_g", "cos_v"]],
                                  before[["rsi", "eb", "cos_g", "cos_v"]])
    best = analyze(copy, reference="best", progress=False)  # store re-measures against x_k
    k = best.reference_step
    xs = TrajectoryStore(copy / "trajectory")
    rows = xs.read(0, k + 1).astype(np.float64)
    want = P.path_ratio(np.linalg.norm(rows[:-1] - rows[1:], axis=1),
                        np.linalg.norm(rows[0] - rows[k]))
    assert best.path_ratio == pytest.approx(want, rel=1e-12)
    assert best.mli["loss"][0] == summary.full_loss[0]


def test_session_measures_the_path_and_its_own_interpolation(tmp_path):
    """An integration's F is the mean of the last epoch's step losses: the interpolation
    evaluates that mean along x_0 -> x* (alpha 1 is F(x*) bit for bit, alpha 0 the
    same mean at x_0), and the path ratio is exact."""
    from trajreg.integrations import RegularitySession

    model, opt, batch = linear_problem(lr=0.05)
    session = RegularitySession(tmp_path / "run", source="plain", figures=False, mode="sketch")

    def flat() -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])

    xs = [flat()]
    train_with_session(session, model, opt, batch, 8, after_step=lambda _: xs.append(flat()))
    summary = session.finish(model, mse)
    assert summary.mu_hat is not None  # sketch: gradients by default
    rows = torch.stack(xs).double().numpy()
    want = P.path_ratio(np.linalg.norm(rows[:-1] - rows[1:], axis=1),
                        np.linalg.norm(rows[0] - rows[-1]))
    assert summary.path_ratio == pytest.approx(want, rel=1e-12)
    mli = summary.mli
    assert mli is not None and len(mli["alpha"]) == len(mli["loss"]) == 21
    assert mli["loss"][-1] == summary.f_star
    with torch.no_grad():  # every step used the same batch: F at x_0 is its loss there
        first = torch.nn.Linear(4, 1)
        torch.nn.utils.vector_to_parameters(torch.from_numpy(rows[0]).float(),
                                            first.parameters())
        assert mli["loss"][0] == pytest.approx(mse(first, batch).item(), rel=1e-6)
    assert mli["monotone"] == P.mli_summary(np.asarray(mli["alpha"]),
                                            np.asarray(mli["loss"])).monotone


# ------------------------------------------------------------------ study reports


def test_study_tables_carry_the_geometry_and_compare_mu_hat():
    """runs.csv gets mu_hat/L_hat per eps, cos_g_positive, path_ratio, mli_monotone;
    techniques.csv compares mu_hat as it compares gamma ("not measured" without gradients)."""
    import copy

    from tests.study.fakes import BASE, make_run
    from trajreg.study import tables
    from trajreg.study.layout import RunRecord
    from trajreg.study.spec import load_study

    study = load_study({"base": copy.deepcopy(BASE), "seeds": list(range(8)),
                        "grid": {"model.norm": ["none", "batch"]}})

    def records(with_geometry):
        out = {}
        for block in study.blocks:
            for rid, axes, seed in block.members:
                bn = axes["model.norm"] == "batch"
                summary = make_run(1.0 + 0.1 * seed if bn else 0.5, final=0.01 if bn else 0.1)[0]
                if with_geometry:
                    mu = (2.0 if bn else 1.0) + 0.01 * seed
                    summary.mu_hat = {"0.0": mu - 0.5, "0.05": mu}
                    summary.L_hat = {"0.0": 9.0, "0.05": 8.0}
                    summary.cos_g_positive, summary.path_ratio = 0.9, 1.5 + seed
                    summary.mli = {"alpha": [0.0, 1.0], "loss": [2.0, 1.0], "monotone": bn,
                                   "max_bump": 0.0}
                out[rid] = RunRecord("done", summary=summary)
        return out

    runs = tables.runs_table(study, records(True))
    assert {"mu_hat_0.0", "mu_hat_0.05", "L_hat_0.05", "cos_g_positive", "path_ratio",
            "mli_monotone"} <= set(runs.columns)
    assert runs["L_hat_0.05"].eq(8.0).all() and set(runs["mli_monotone"]) == {True, False}
    tech = tables.techniques_table(runs, tables.comparisons(study, runs), study.report)
    row = tech.iloc[0]
    assert row["outcome_mu"] == "larger" and row["mu_diff_median"] == pytest.approx(1.0)
    assert row["outcome_gamma"] == "larger"
    # L_hat, cos_g_positive and path_ratio are equal within each pair: no difference
    for short in ("L", "cos_g", "path"):
        assert row[f"outcome_{short}"] == "inconclusive" and row[f"{short}_diff_median"] == 0
    assert (row["mli_monotone_with"], row["mli_monotone_without"]) == (1.0, 0.0)
    corr = tables.correlation_table(study, runs, tables.comparisons(study, runs),
                                    study.report)
    mu = corr[(corr["scope"] == "stratum") & (corr["metric"] == "mu_hat_0.05")].iloc[0]
    assert mu["n"] == 16 and mu["spearman_rho"] > 0.5  # larger mu_hat, lower final loss
    runs = tables.runs_table(study, records(False))  # recorded without gradients
    assert runs["mu_hat_0.05"].isna().all() and runs["path_ratio"].isna().all()
    tech = tables.techniques_table(runs, tables.comparisons(study, runs), study.report)
    assert tech.iloc[0]["outcome_mu"] == "not measured"


def test_interpolation_off_leaves_mli_null_and_the_rest_unchanged(tmp_path, one_thread):
    """record.interpolation: false skips the 19 evaluations of F: summary.json's mli is
    null, no mli.png, every other measured key as with it; a session's likewise."""
    from trajreg.integrations import RegularitySession

    raw = tiny(train={"epochs": 2, "threads": 1}, record={"mode": "sketch"})
    _, with_mli = run(load_config(raw), tmp_path / "with", figures=True, progress=False)
    off = {**raw, "record": {**raw["record"], "interpolation": False}}
    out, summary = run(load_config(off), tmp_path / "without", figures=True, progress=False)
    assert with_mli.mli is not None and summary.mli is None
    assert not (out / "mli.png").exists() and (tmp_path / "with" / "mli.png").is_file()
    for key in ("gamma_hat", "kappa_hat", "mu_hat", "L_hat", "path_ratio", "sketch_error"):
        assert getattr(summary, key) == getattr(with_mli, key), key
    assert analyze(out, eps=[0.0, 0.1], progress=False).mli is None
    model, opt, batch = linear_problem(lr=0.05)
    session = RegularitySession(tmp_path / "session", source="plain", figures=False,
                                mode="sample", interpolation=False)
    train_with_session(session, model, opt, batch, 8)
    assert session.finish(model, mse).mli is None
