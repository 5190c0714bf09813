"""The decision rule on constructed tables: runs built in memory with chosen numbers,
fed to the real table code (tables.runs_table, comparisons, techniques_table)."""

from __future__ import annotations

import copy
import math

import pytest

from tests.study.fakes import BASE, technique_rows
from trajreg.study import tables
from trajreg.study.spec import load_study
from trajreg.study.verdicts import power_note, strata_descriptions, technique_verdicts


def norm_study(seeds, **report):
    return load_study({"base": copy.deepcopy(BASE), "seeds": list(seeds),
                       "grid": {"model.norm": ["none", "batch"]},
                       **({"report": report} if report else {})})


def bn(with_gamma, without_gamma, with_final=0.01, without_final=0.1, **kw):
    """make(): batch-norm runs get with_gamma(seed), the others without_gamma(seed)."""
    def make(block, axes, seed):
        if axes["model.norm"] == "batch":
            return {"gamma": with_gamma(seed), "final": with_final, **kw}
        return {"gamma": without_gamma(seed), "final": without_final, **kw}
    return make


def test_one_of_three_seeds_larger_is_never_larger():
    tech, _, _ = technique_rows(norm_study([0, 1, 2]),
                                bn(lambda s: 2.0 if s == 0 else 0.1, lambda s: 0.5))
    row = tech.iloc[0]
    assert row["larger_pairs"] == 1 and row["outcome_gamma"] == "inconclusive"


def test_three_of_three_cannot_be_decided_and_the_report_says_why():
    study = norm_study([0, 1, 2])
    tech, _, _ = technique_rows(study, bn(lambda s: 1.0 + s, lambda s: 0.2))
    row = tech.iloc[0]
    assert row["larger_pairs"] == 3 and row["p_value"] == 0.25
    assert row["outcome_gamma"] == "inconclusive" and row["outcome_speed"] == "inconclusive"
    assert "3 pairs cannot be decided" in row["note"]
    assert "cannot be decided at all" in power_note(tech, study.report)


def test_eight_consistent_seeds_are_decided():
    tech, _, _ = technique_rows(norm_study(range(8)), bn(lambda s: 1.0 + 0.1 * s,
                                                         lambda s: 0.5 + 0.01 * s))
    row = tech.iloc[0]
    assert row["p_value"] == 2 / 256 and row["p_holm"] == 2 / 256
    assert row["diff_low"] > 0
    assert row["outcome_gamma"] == "larger"
    assert row["outcome_speed"] == "faster"  # final loss 0.01 against 0.1
    assert row["faster_pairs"] == 8 and row["speed_diff_median"] < 0
    [claim] = technique_verdicts(tech)
    assert claim.startswith("normalization (1 comparison): gamma_hat larger with the "
                            "technique in 1 and smaller in 0")
    assert "supports the claim" in claim


def test_a_tiny_effect_is_inconclusive():
    tech, _, _ = technique_rows(norm_study(range(8)), bn(lambda s: 1.01, lambda s: 1.0))
    row = tech.iloc[0]
    assert row["larger_pairs"] == 8 and row["p_holm"] < 0.05
    assert row["outcome_gamma"] == "inconclusive" and "minimum effect" in row["note"]


def test_within_the_runs_own_measurement_uncertainty_is_inconclusive():
    tech, _, _ = technique_rows(norm_study(range(8)),
                                bn(lambda s: 1.5, lambda s: 1.0, gamma_ci=0.6))
    row = tech.iloc[0]
    assert row["measurement_uncertainty"] == pytest.approx(0.6)
    assert row["outcome_gamma"] == "inconclusive" and "measurement uncertainty" in row["note"]


def test_two_untrained_runs_are_not_comparable():
    def make(block, axes, seed):  # no run falls below 0.9 of its initial loss
        return {"gamma": 1.0 if axes["model.norm"] == "batch" else 0.5, "final": 1.95}
    tech, runs, _ = technique_rows(norm_study([0]), make)
    assert not runs["trained"].any()
    row = tech.iloc[0]
    assert row["outcome_gamma"] == "not comparable" == row["outcome_speed"]
    assert row["n"] == 0 and row["n_not_trained"] == 1
    assert set(row["runs_not_trained"].split()) == set(runs["run_id"])
    assert "is undecided" in technique_verdicts(tech)[0]


def test_a_diverged_seed_is_left_out_and_listed():
    def make(block, axes, seed):
        if axes["model.norm"] == "none" and seed == 3:
            return {"gamma": 0.5, "diverged": True, "full_loss": [2.0, 1.0, 0.5, math.inf]}
        return {"gamma": 1.0 if axes["model.norm"] == "batch" else 0.5,
                "final": 0.01 if axes["model.norm"] == "batch" else 0.1}
    tech, runs, _ = technique_rows(norm_study(range(9)), make)
    row = tech.iloc[0]
    assert (row["n_pairs"], row["n_not_trained"], row["n"]) == (9, 1, 8)
    assert row["outcome_gamma"] == "larger"
    assert "seed 3" in row["note"]


@pytest.mark.parametrize("grid", [
    {"optim.lr": [0.1, 0.01]},
    {"optim": [{"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.01}]},
    {"model.width": [8, 32]},
])
def test_other_axes_never_produce_a_claim_verdict(grid):
    study = load_study({"base": copy.deepcopy(BASE), "seeds": list(range(8)), "grid": grid,
                        "compare": {next(iter(grid)): {"without": next(iter(grid.values()))[0]}}})

    def make(block, axes, seed):
        first = next(iter(grid.values()))[0]
        value = next(iter(axes.values()))
        return {"gamma": 0.5 if value == first else 2.0,
                "final": 0.1 if value == first else 0.01}
    tech, _, _ = technique_rows(study, make)
    row = tech.iloc[0]
    assert row["role"] == "stratum" and row["outcome_gamma"] == "larger"
    assert technique_verdicts(tech) == []
    [text] = strata_descriptions(tech)
    assert "not evidence about the claim's techniques" in text


def test_the_optimizer_axis_is_a_claim_when_the_optimizers_differ():
    study = load_study({"base": copy.deepcopy(BASE), "seeds": [0],
                        "grid": {"optim": [{"name": "sgd", "lr": 0.1},
                                           {"name": "adam", "lr": 0.001}]}})
    tech, _, _ = technique_rows(study, lambda b, a, s: {"gamma": 1.0})
    assert tech.iloc[0]["role"] == "claim" and tech.iloc[0]["technique"] == "optimizer"
    assert tech.iloc[0]["metric"] == "kappa_hat_0.05"


def test_holm_counts_every_comparison():
    # 8 of 8 pairs agree (p = 2/256) in each of 9 comparisons: 9 * 2/256 > 0.05, so the
    # first Holm step fails and nothing is decided (one comparison alone is decided:
    # test_eight_consistent_seeds_are_decided)
    values = ["none", "batch", "layer", "group"]
    study = load_study({"base": copy.deepcopy(BASE), "seeds": list(range(8)), "blocks": [
        {"name": f"b{i}", "base": {"model": {"depth": 2 + i}},
         "grid": {"model.norm": values}} for i in range(3)]})
    assert len(tables.comparisons(study, tables.runs_table(study, {}))) == 9

    def make(block, axes, seed):
        return {"gamma": 0.5 if axes["model.norm"] == "none" else 1.0 + 0.01 * seed}
    tech, _, _ = technique_rows(study, make)
    assert (tech["p_value"] == 2 / 256).all()
    assert (tech["outcome_gamma"] == "inconclusive").all()
    assert tech["p_holm"].tolist() == pytest.approx([9 * 2 / 256] * 9)


def test_a_stratum_with_fewer_than_four_runs_has_no_rho():
    study = norm_study([0])  # 2 runs in the stratum

    def make(block, axes, seed):
        return {"gamma": 1.0 if axes["model.norm"] == "batch" else 0.5}
    tech, runs, comps = technique_rows(study, make)
    corr = tables.correlation_table(study, runs, comps, study.report)
    stratum = corr[corr["scope"] == "stratum"].iloc[0]
    assert stratum["n"] == 2 and math.isnan(stratum["spearman_rho"])
    assert stratum["note"] == "n < 4: no rho"
    pooled = corr[corr["scope"] == "pooled"].iloc[0]
    assert math.isnan(pooled["spearman_rho"])


def test_strata_rho_and_the_lr_warning():
    study = load_study({"base": copy.deepcopy(BASE), "seeds": list(range(4)), "blocks": [
        {"name": "bn", "grid": {"model.norm": ["none", "batch"]}},
        {"name": "bn-fast", "base": {"optim": {"lr": 0.5}},
         "grid": {"model.norm": ["none", "batch"]}}]})

    def make(block, axes, seed):  # larger gamma, lower final loss: rho = +1 within strata
        batch = axes["model.norm"] == "batch"
        return {"gamma": (1.0 if batch else 0.5) + 0.01 * seed,
                "final": (0.01 if batch else 0.1) * (1 + 0.01 * seed)}
    tech, runs, comps = technique_rows(study, make)
    corr = tables.correlation_table(study, runs, comps, study.report)
    strata = corr[(corr["scope"] == "stratum") & (corr["metric"] == "gamma_hat_0.05")]
    assert len(strata) == 2 and (strata["n"] == 8).all()
    # every stratum also gets the geometry's rhos; these runs have no gradients: none
    geometry = corr[(corr["scope"] == "stratum") & (corr["metric"] != "gamma_hat_0.05")]
    assert len(geometry) == 8 and geometry["spearman_rho"].isna().all()
    assert set(geometry["metric"]) == {"mu_hat_0.05", "L_hat_0.05", "cos_g_positive",
                                       "path_ratio"}
    assert (strata["spearman_rho"] > 0.5).all()
    pooled = corr[corr["scope"] == "pooled"].iloc[0]
    assert pooled["n"] == 16
    assert pooled["spearman_rho"] == pytest.approx(strata["spearman_rho"].mean())
    everything = corr[corr["scope"] == "all runs"].iloc[0]
    assert everything["note"].startswith("WARNING: the runs differ in learning rate")


def test_the_study_may_set_its_own_train_margin():
    make = bn(lambda s: 1.0, lambda s: 0.5, with_final=1.7, without_final=1.7)  # F_E = 0.85 F_0
    _, runs, _ = technique_rows(norm_study([0]), make)
    assert runs["trained"].all()  # the runs' own margin, 0.1
    tech, runs, _ = technique_rows(norm_study([0], train_margin=0.2), make)
    assert not runs["trained"].any() and tech.iloc[0]["outcome_gamma"] == "not comparable"


@pytest.mark.parametrize("gamma, speed, words", [
    (["larger", "larger"], ["faster", "faster"], "supports the claim"),
    (["larger", "inconclusive"], ["inconclusive", "inconclusive"], "supports the gamma_hat half"),
    (["larger", "larger"], ["faster", "slower"], "convergence slower in 1 of the 2"),
    (["smaller", "inconclusive"], ["faster", "faster"], "contradicts the claim"),
    (["larger", "smaller"], ["faster", "faster"], "larger in some decided comparisons"),
    (["inconclusive", "not comparable"], ["faster", "not comparable"], "is undecided"),
])
def test_technique_verdict_counts_only_decided_comparisons(gamma, speed, words):
    import pandas as pd

    tech = pd.DataFrame({"technique": "activation", "role": "claim", "outcome_gamma": gamma,
                         "outcome_speed": speed, "metric": "gamma_hat_0.05"})
    [text] = technique_verdicts(tech)
    assert words in text
    assert f"({gamma.count('inconclusive')} inconclusive, " \
           f"{gamma.count('not comparable')} not comparable)" in text
