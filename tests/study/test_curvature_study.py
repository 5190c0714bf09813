"""record.curvature in studies: runs.csv carries each run's sharpness, techniques.csv
compares it with the paired statistics of gamma, correlations.csv correlates it
within strata with gamma and speed, and the report says so in words."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

from tests.study.fakes import BASE, make_run
from trajreg.study import load_study, run_study, tables, verdicts
from trajreg.study.layout import RunRecord

CURVATURE = ["lambda_max", "lambda_max_precond", "curv_update", "critical_sharpness",
             "above_fraction", "lambda_max_star", "curvature_steps"]


def test_a_study_with_curvature_compares_and_correlates_sharpness(tmp_path, one_thread):
    """Real runs (digits MLP, norm none vs batch, 3 seeds): at lr 0.5 the batch-norm
    runs sit partly above 2/eta, so above_fraction differs between the sides."""
    raw = {"base": {"data": {"name": "digits", "batch_size": 64, "subset": 256},
                    "model": {"name": "mlp", "depth": 3, "width": 16},
                    "optim": {"name": "sgd", "lr": 0.5}, "train": {"epochs": 3},
                    "record": {"mode": "store", "curvature": {"rate": 0.3}}},
           "seeds": [0, 1, 2], "grid": {"model.norm": ["none", "batch"]}}
    result = run_study(load_study(raw), tmp_path, executor="serial", progress=False)
    assert len(result.done) == 6 and not result.failed
    runs = pd.read_csv(result.report["runs"])
    assert runs["trained"].all()
    # each column is the run's own summary.json curvature (SGD: no preconditioned one)
    for _, row in runs.iterrows():
        curv = json.loads((tmp_path / row["run_dir"] / "summary.json").read_text())[
            "curvature"]
        assert row["lambda_max"] == pytest.approx(curv["median"]["lambda_max"], rel=1e-12)
        assert row["above_fraction"] == pytest.approx(curv["above_fraction"], rel=1e-12)
        assert row["lambda_max_star"] == pytest.approx(curv["lambda_max_star"], rel=1e-12)
        assert row["curvature_steps"] == curv["steps_window"] > 0
    assert runs[CURVATURE].drop(columns="lambda_max_precond").notna().all().all()
    assert runs["lambda_max_precond"].isna().all()

    tech = pd.read_csv(result.report["techniques"])
    assert len(tech) == 1
    row = tech.iloc[0]
    by = runs.set_index(["norm", "seed"])
    for short in ("lambda_max", "above_fraction", "curv_update", "critical_sharpness",
                  "lambda_max_star"):
        d = [by.at[("batch", s), short] - by.at[("none", s), short] for s in range(3)]
        assert row[f"{short}_diff_median"] == pytest.approx(float(np.median(d)), abs=1e-12)
        assert row[f"{short}_with"] == pytest.approx(by.loc["batch"][short].median())
        for part in ("diff_low", "diff_high", "p_holm"):
            assert math.isfinite(row[f"{short}_{part}"])
        # 3 pairs: the sign test's p is at least 0.25, so nothing is decided
        assert row[f"outcome_{short}"] == "inconclusive"
    assert row["outcome_lambda_max_precond"] == "not measured"
    assert math.isnan(row["lambda_max_precond_diff_median"])

    corr = pd.read_csv(result.report["correlations"], keep_default_na=False)
    stratum = corr[(corr["scope"] == "stratum") & (corr["metric"] == "lambda_max")]
    assert stratum["against"].tolist() == ["speed", "gamma_hat_0.05"]
    assert (stratum["n"] == 6).all()
    rho_speed = sps.spearmanr(runs["lambda_max"], -runs["auc_log_loss"]).statistic
    rho_gamma = sps.spearmanr(runs["lambda_max"], runs["gamma_hat_0.05"]).statistic
    assert stratum["spearman_rho"].astype(float).tolist() == pytest.approx(
        [rho_speed, rho_gamma])
    pooled = corr[(corr["scope"] == "pooled") & (corr["metric"] == "lambda_max")]
    assert pooled["against"].tolist() == ["speed", "gamma_hat_0.05"]
    # one stratum: its rho, no interval
    assert pooled["spearman_rho"].astype(float).tolist() == pytest.approx(
        [rho_speed, rho_gamma])
    assert (pooled["ci_low"] == "").all()

    html = result.report["report"].read_text()
    assert "<h2>Sharpness and gamma</h2>" in html
    assert "Does lower sharpness go with larger gamma_hat_0.05?" in html
    assert "normalization (1 comparison with curvature)" in html
    assert "Sharpness (median lambda_max) inconclusive" in html


def _study(blocks: int = 2, seeds: int = 8):
    return load_study({"base": copy.deepcopy(BASE), "seeds": list(range(seeds)),
                       "blocks": [{"name": f"b{i}", "base": {"model": {"depth": 2 + i}},
                                   "grid": {"model.norm": ["none", "batch"]}}
                                  for i in range(blocks)]})


def _records(study, curvature):
    """Batch norm: larger gamma, faster, and (``curvature``) lower sharpness, fewer steps
    above the edge; within each side, the seed orders all three the same way."""
    out = {}
    for block in study.blocks:
        for rid, axes, seed in block.members:
            bn = axes["model.norm"] == "batch"
            summary = make_run((1.0 if bn else 0.5) + 0.01 * seed,
                               final=(0.01 if bn else 0.1) * (1 - 0.01 * seed))[0]
            if curvature:
                lam = (2.0 if bn else 8.0) - 0.1 * seed
                summary.curvature = {
                    "lambda_max_star": lam / 2, "steps": 12, "steps_window": 10,
                    "compared": "lambda_max", "threshold": "(2 + 2 momentum) / eta",
                    "above_fraction": 0.1 if bn else 0.6 + 0.01 * seed,
                    "median": {"lambda_max": lam, "curv_update": lam / 3,
                               "critical_sharpness": lam / 4, "lambda_max_precond": None,
                               "eos_threshold": 20.0},
                    "converged_fraction": 1.0}
            out[rid] = RunRecord("done", summary=summary)
    return out


def test_sharpness_decided_and_pooled_over_strata():
    study = _study()
    runs = tables.runs_table(study, _records(study, curvature=True))
    comps = tables.comparisons(study, runs)
    tech = tables.techniques_table(runs, comps, study.report)
    assert len(tech) == 2
    for _, row in tech.iterrows():
        assert row["outcome_gamma"] == "larger"
        assert row["outcome_lambda_max"] == "smaller"
        assert row["lambda_max_diff_median"] == pytest.approx(-6.0)
        assert row["outcome_above_fraction"] == "smaller"
        assert row["outcome_lambda_max_precond"] == "not measured"
        # 8 of 8 pairs: p = 2 / 256, Holm over the two comparisons of the family
        assert row["lambda_max_p_holm"] == pytest.approx(2 * 2 / 256)
    corr = tables.correlation_table(study, runs, comps, study.report)
    stratum = corr[(corr["scope"] == "stratum") & (corr["metric"] == "lambda_max")]
    assert len(stratum) == 4 and (stratum["n"] == 16).all()
    assert (stratum["spearman_rho"] < -0.5).all()
    pooled = corr[(corr["scope"] == "pooled") & (corr["metric"] == "lambda_max")].set_index(
        "against")
    assert pooled.at["gamma_hat_0.05", "n"] == 32
    assert pooled.at["gamma_hat_0.05", "ci_high"] < 0
    # the rows before the all-run one: gamma's pooled rho, then lambda_max's two
    assert corr["scope"].tolist()[-4:] == ["pooled"] * 3 + ["all runs"]
    words = verdicts.sharpness_correlations(corr)
    assert words[1].startswith("Does lower sharpness go with larger gamma_hat_0.05?")
    assert words[1].endswith("yes, lower sharpness goes with larger gamma_hat_0.05.")
    assert "over 2 strata of 32 runs" in words[1]
    assert words[0].endswith("yes, lower sharpness goes with faster convergence.")
    assert verdicts.sharpness_verdicts(tech) == [
        "normalization (2 comparisons with curvature): median lambda_max smaller with the "
        "technique in 2 and larger in 0 decided comparisons (0 inconclusive, 0 not "
        "comparable); the fraction of sampled steps above the edge of stability smaller "
        "in 2 and larger in 0. The technique lowers sharpness wherever decided."]


def test_runs_without_curvature_are_not_measured_and_add_no_rows():
    study = _study(blocks=1)
    runs = tables.runs_table(study, _records(study, curvature=False))
    assert runs[CURVATURE].isna().all().all()
    comps = tables.comparisons(study, runs)
    row = tables.techniques_table(runs, comps, study.report).iloc[0]
    assert row["outcome_gamma"] == "larger"
    for short in tables.CURVATURE_COMPARED:
        assert row[f"outcome_{short}"] == "not measured"
        assert math.isnan(row[f"{short}_with"]) and math.isnan(row[f"{short}_diff_median"])
    assert verdicts.sharpness(row) == ""
    corr = tables.correlation_table(study, runs, comps, study.report)
    assert "lambda_max" not in set(corr["metric"]) and set(corr["against"]) == {"speed"}
    assert verdicts.sharpness_correlations(corr) == []
    # pending runs: no pair at all, so not comparable rather than not measured
    runs = tables.runs_table(study, {})
    row = tables.techniques_table(runs, tables.comparisons(study, runs),
                                  study.report).iloc[0]
    assert row["outcome_lambda_max"] == "not comparable"
