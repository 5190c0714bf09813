"""The study report computed from run data whose answers are known.

The run directories here hold summaries written by hand with chosen gamma_hat,
kappa_hat and loss curves, so every number of runs.csv and techniques.csv, the
verdicts and the rank correlation have known values.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd

from tests.study.fakes import fake_run, loss_curve
from trajreg.study.layout import FAILED_SUFFIX, runs_dir
from trajreg.study.report import write_report
from trajreg.study.spec import load_study
from trajreg.study.stats import spearman

BASE = {"data": {"name": "digits", "batch_size": 64},
        "model": {"name": "mlp", "depth": 2, "width": 8},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 3}, "record": {"mode": "store"}}


def by(study, block, **want):
    """The run ids of a block whose grid values match ``want`` (axis -> value)."""
    b = next(b for b in study.blocks if b.name == block)
    return {seed: rid for rid, axes, seed in b.members
            if all(axes[k] == v for k, v in want.items())}


def test_report_numbers(tmp_path):
    study = load_study({"name": "known", "base": copy.deepcopy(BASE), "seeds": [0, 1, 2],
                        "blocks": [
                            {"name": "bn", "grid": {"model.norm": ["none", "batch"]}},
                            {"name": "opt", "grid": {"optim": [{"name": "sgd", "lr": 0.1},
                                                               {"name": "adam", "lr": 0.01}]}},
                        ]})
    with_bn = by(study, "bn", **{"model.norm": "batch"})
    without_bn = by(study, "bn", **{"model.norm": "none"})
    for seed, g in zip([0, 1, 2], [1.0, 2.0, 0.1], strict=True):
        fake_run(tmp_path, with_bn[seed], g, 9.0, 0.01)
    for seed in [0, 1, 2]:
        fake_run(tmp_path, without_bn[seed], 0.5, 9.0, 0.2 + seed * 0.01)
    sgd = by(study, "opt", optim={"name": "sgd", "lr": 0.1})
    adam = by(study, "opt", optim={"name": "adam", "lr": 0.01})
    for seed in [0, 1]:
        fake_run(tmp_path, adam[seed], 0.1, 0.3, 0.05)
    fake_run(tmp_path, adam[2], 0.1, 0.3, full_loss=[*loss_curve(0.05)[:-1], math.inf],
             diverged=True)
    for seed in [0, 1]:
        fake_run(tmp_path, sgd[seed], 5.0, 0.2, 0.1)
    # sgd seed 2 failed: its pair drops out of the comparison
    (runs_dir(tmp_path) / f"{sgd[2]}{FAILED_SUFFIX}").write_text(
        json.dumps({"run_id": sgd[2], "reason": "RuntimeError: out of memory"}))

    paths = write_report(tmp_path, study)
    runs = pd.read_csv(paths["runs"])
    tech = pd.read_csv(paths["techniques"])

    assert len(runs) == 12
    assert runs.set_index("run_id").loc[sgd[2], "status"] == "failed"
    assert runs.set_index("run_id").loc[adam[2], "status"] == "diverged"
    for col in ["run_id", "architecture", "dataset", "activation", "norm", "skip", "optimizer",
                "lr", "seed", "gamma_hat_0.0", "gamma_hat_0.05", "kappa_hat_0.0",
                "kappa_hat_0.05", "gamma_bar", "window_end", "final_loss",
                "steps_to_threshold", "auc_log_loss", "diverged", "run_dir"]:
        assert col in runs.columns
    row = runs.set_index("run_id").loc[with_bn[1]]
    assert row["gamma_hat_0.05"] == 2.0 and row["gamma_hat_0.0"] == 1.0
    assert row["run_dir"] == f"runs/{with_bn[1]}" and row["norm"] == "batch"

    bn = tech[tech["technique"] == "normalization"].iloc[0]
    assert (bn["with"], bn["without"]) == ("batch", "none")
    assert bn["metric"] == "gamma_hat_0.05"
    assert bn["gamma_with"] == 1.0 and bn["gamma_without"] == 0.5
    assert bn["gamma_larger"] and bn["gamma_larger_seeds"] == 2 and bn["n_seeds"] == 3
    assert bn["faster"] and bn["faster_seeds"] == 3
    from trajreg.principle import auc_log_loss

    expect_auc = auc_log_loss(loss_curve(0.01))
    assert np.isclose(bn["speed_with"], expect_auc)
    assert set(bn["runs_with"].split()) == set(with_bn.values())

    opt = tech[tech["technique"] == "optimizer"].iloc[0]
    assert opt["with"] == "name=adam lr=0.01" and opt["without"] == "name=sgd lr=0.1"
    assert opt["metric"] == "kappa_hat_0.05"  # across optimizers: kappa, not gamma
    assert opt["n_seeds"] == 2  # seed 2's sgd run failed
    assert opt["gamma_with"] == 0.3 and opt["gamma_without"] == 0.2 and opt["gamma_larger"]
    assert opt["faster"] and opt["faster_seeds"] == 2

    html = paths["report"].read_text()
    assert "normalization: in 1 of 1 comparisons" in html
    assert "larger in 2 of 3 seeds" in html
    assert "RuntimeError: out of memory" in html
    assert "data:image/png;base64," in html  # self-contained figures
    assert 'src="http' not in html and "<script" not in html
    for rid in with_bn.values():
        assert rid in html

    # the rank correlation over all finished runs, from the numbers written above
    done = runs[runs["status"].isin(["done", "diverged"])]
    speed = -done["auc_log_loss"].fillna(np.inf).to_numpy()
    rho = spearman(done["gamma_hat_0.05"].to_numpy(), speed)
    assert f"{rho:.4g}" in html


def test_partial_study_report(tmp_path):
    study = load_study({"base": copy.deepcopy(BASE), "seeds": [0, 1],
                        "grid": {"model.norm": ["none", "batch"]}})
    paths = write_report(tmp_path, study)
    tech = pd.read_csv(paths["techniques"])
    assert tech["n_seeds"].tolist() == [0]
    assert "no finished matched runs yet" in paths["report"].read_text()
