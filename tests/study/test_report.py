"""The study report computed from run directories whose answers are known.

The run directories hold summaries and metrics written with chosen gamma_hat,
kappa_hat and loss curves (tests/study/fakes.py), read back by the report's own
readers, so every number of the tables and the outcomes are known.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd

from tests.study.fakes import BASE, fake_run, loss_curve
from trajreg.principle import auc_log_loss
from trajreg.study.layout import FAILED_SUFFIX, runs_dir, write_study_file
from trajreg.study.report import write_report
from trajreg.study.spec import load_study

SEEDS = list(range(8))


def by(study, block, **want):
    """The run ids of a block whose grid values match ``want`` (axis -> value)."""
    b = next(b for b in study.blocks if b.name == block)
    return {seed: rid for rid, axes, seed in b.members
            if all(axes[k] == v for k, v in want.items())}


def known_study(tmp_path):
    study = load_study({"name": "known", "base": copy.deepcopy(BASE), "seeds": SEEDS,
                        "blocks": [
                            {"name": "bn", "grid": {"model.norm": ["none", "batch"]}},
                            {"name": "opt", "grid": {"optim": [{"name": "sgd", "lr": 0.1},
                                                               {"name": "adam", "lr": 0.01}]}},
                        ]})
    write_study_file(tmp_path, study.raw)
    with_bn = by(study, "bn", **{"model.norm": "batch"})
    without_bn = by(study, "bn", **{"model.norm": "none"})
    for seed in SEEDS:
        fake_run(tmp_path, with_bn[seed], 1.0 + 0.1 * seed, final=0.01)
        fake_run(tmp_path, without_bn[seed], 0.5, final=0.2 + seed * 0.01)
    sgd = by(study, "opt", optim={"name": "sgd", "lr": 0.1})
    adam = by(study, "opt", optim={"name": "adam", "lr": 0.01})
    for seed in SEEDS[:-1]:
        fake_run(tmp_path, adam[seed], 3.0, final=0.05, lr=0.01)
    fake_run(tmp_path, adam[7], 3.0, full_loss=[*loss_curve(0.05)[:-1], math.inf],
             diverged=True, lr=0.01)
    for seed in SEEDS[:-2]:
        fake_run(tmp_path, sgd[seed], 2.0, final=0.1, lr=0.1)
    # sgd seed 6 failed: its pair drops out; seed 7 pairs with the diverged adam run
    (runs_dir(tmp_path) / f"{sgd[6]}{FAILED_SUFFIX}").write_text(
        json.dumps({"run_id": sgd[6], "reason": "RuntimeError: out of memory"}))
    fake_run(tmp_path, sgd[7], 2.0, final=0.1, lr=0.1)
    return study, with_bn, without_bn, sgd, adam


def test_report_numbers(tmp_path):
    study, with_bn, without_bn, sgd, adam = known_study(tmp_path)
    paths = write_report(tmp_path, study)
    runs = pd.read_csv(paths["runs"]).set_index("run_id")
    tech = pd.read_csv(paths["techniques"], keep_default_na=False)

    assert len(runs) == 32
    assert runs.loc[sgd[6], "status"] == "failed"
    assert runs.loc[adam[7], "status"] == "diverged" and not runs.loc[adam[7], "trained"]
    assert runs.loc[with_bn[1], "gamma_hat_0.05"] == 1.1
    assert runs.loc[with_bn[1], "run_dir"] == f"runs/{with_bn[1]}"
    assert (runs["threads"].dropna() == 1).all()

    bn = tech[tech["technique"] == "normalization"].iloc[0]
    assert (bn["with"], bn["without"], bn["role"]) == ("batch", "none", "claim")
    assert bn["metric"] == "gamma_hat_0.05" and bn["n"] == 8
    diffs = [1.0 + 0.1 * s - 0.5 for s in SEEDS]
    assert np.isclose(float(bn["diff_median"]), np.median(diffs))
    assert float(bn["p_value"]) == 2 / 256 and bn["outcome_gamma"] == "larger"
    speed_diffs = [auc_log_loss(loss_curve(0.01)) - auc_log_loss(loss_curve(0.2 + s * 0.01))
                   for s in SEEDS]
    assert np.isclose(float(bn["speed_diff_median"]), np.median(speed_diffs))
    assert bn["outcome_speed"] == "faster" and bn["outcome_speed_steps"] == "faster"
    assert set(bn["runs_with"].split()) == set(with_bn.values())

    opt = tech[tech["technique"] == "optimizer"].iloc[0]
    assert opt["with"] == "name=adam lr=0.01" and opt["metric"] == "kappa_hat_0.05"
    # 7 finished pairs (seed 6 failed), one of them not comparable (adam diverged)
    assert (int(opt["n_pairs"]), int(opt["n_not_trained"]), int(opt["n"])) == (7, 1, 6)
    assert opt["runs_not_trained"] == adam[7]
    assert np.isclose(float(opt["diff_median"]), 3.0 * 0.01 - 2.0 * 0.1)
    # 6 of 6 pairs: p = 1/32; Holm's second step (bn's p = 1/128 comes first) uses alpha / 1
    assert float(opt["p_value"]) == float(opt["p_holm"]) == 1 / 32
    assert opt["outcome_gamma"] == "smaller"

    sens = pd.read_csv(paths["sensitivity"], keep_default_na=False)
    row = sens[sens["technique"] == "normalization"].iloc[0]
    assert row["window"] == "larger"  # metrics.parquet reproduce the summaries' gammas
    assert row["eps_0.0"] == row["eps_0.05"] == row["eps_0.1"] == "larger"
    assert row["reference_best"] == "larger" and row["survives"] == "yes"
    assert sens[sens["technique"] == "optimizer"].iloc[0]["survives"] == "yes"

    corr = pd.read_csv(paths["correlations"], keep_default_na=False)
    # two strata, each with gamma's (or kappa's) rho and the four geometry metrics' rhos
    assert corr["scope"].tolist() == ["stratum"] * 10 + ["pooled", "all runs"]
    assert corr["metric"].str.startswith(("gamma_hat", "kappa_hat")).sum() == 3
    assert "WARNING" in corr.iloc[-1]["note"]  # lrs 0.05, 0.1 and 0.01

    html = paths["report"].read_text()
    assert html.index("forest.png") < html.index("Verdicts on the paper")
    assert "normalization (1 comparison): gamma_hat larger with the technique in 1" in html
    assert "RuntimeError: out of memory" in html
    assert "data:image/png;base64," in html  # self-contained figures
    assert 'src="http' not in html and "<script" not in html
    assert "overflow-x:auto" in html
    for rid in with_bn.values():
        assert rid in html


def test_rerunning_the_report_gives_byte_identical_csvs(tmp_path):
    study = known_study(tmp_path)[0]
    first = {k: p.read_bytes() for k, p in write_report(tmp_path, study).items()
             if p.suffix == ".csv"}
    second = {k: p.read_bytes() for k, p in write_report(tmp_path, study).items()
              if p.suffix == ".csv"}
    assert first.keys() == {"runs", "techniques", "sensitivity", "correlations"}
    assert first == second


def test_reference_best_is_na_when_the_runs_cannot_give_it(tmp_path):
    study = load_study({"base": copy.deepcopy(BASE), "seeds": SEEDS,
                        "grid": {"model.norm": ["none", "batch"]}})
    write_study_file(tmp_path, study.raw)
    for rid, axes, _ in study.blocks[0].members:
        g = 1.0 if axes["model.norm"] == "batch" else 0.5
        fake_run(tmp_path, rid, g, sensitivity={
            "gamma_hat": {"0.0": g - 1, "0.05": g, "0.1": 0.5}, "kappa_hat": {},
            "reference_best": None})
    sens = pd.read_csv(write_report(tmp_path, study)["sensitivity"], keep_default_na=False)
    row = sens.iloc[0]
    assert row["reference_best"] == "n/a"
    assert row["eps_0.1"] == "inconclusive"  # equal gammas at eps 0.1
    assert row["survives"] == "no (eps_0.1: inconclusive)"


def test_partial_study_report(tmp_path):
    study = load_study({"base": copy.deepcopy(BASE), "seeds": [0, 1],
                        "grid": {"model.norm": ["none", "batch"]}})
    paths = write_report(tmp_path, study)
    tech = pd.read_csv(paths["techniques"])
    assert tech["n_pairs"].tolist() == [0]
    assert tech["outcome_gamma"].tolist() == ["not comparable"]
    assert "no finished pair of runs" in paths["report"].read_text()
