"""The report's tables as DataFrames: runs.csv, techniques.csv, sensitivity.csv and
correlations.csv. Pure: run records (or a constructed runs table) in, tables out.

Comparisons. In each block, for each grid axis with a comparison direction
(``spec.DEFAULT_COMPARE`` or the study's ``compare``), runs are paired that differ
*only* in that axis: same values of every other axis, the same seed. The metric is
gamma_hat at the report's eps, or kappa_hat = eta * gamma_hat along optimizer axes
(``optim``, ``optim.*``), whose runs take steps of different sizes; a block of
checkpoint series compares gamma_hat along every axis (the epochwise gamma, measured
at the checkpoints, involves no step size). Speed is ``auc_log_loss``, the mean log
full training loss (lower is faster; for a series, over its checkpoints).

A pair in which either run did not train (``Summary.trained``: diverged, or the final
loss not below (1 - train_margin) times the initial one) is *not comparable*: it is
left out and listed. Over the remaining pairs, the paired differences (with minus
without) give a median, a bootstrap interval of the median and an exact sign test
(``stats.py``). An outcome is decided ("larger"/"smaller" for the metric,
"faster"/"slower" for speed) only when

1. the sign test's p, Holm-corrected over the study's comparisons, is below alpha;
2. the bootstrap interval of the median difference excludes 0;
3. |median difference| >= min_effect times the larger side's median |value|;
4. for one-pass record modes, |median difference| exceeds the runs' own
   measurement uncertainty (the median over pairs of the sum of the two runs'
   interval half-widths);

otherwise it is "inconclusive"; with no comparable pair it is "not comparable".
The curvature along the path (``record.curvature``: the run's median lambda_max and
the others of ``CURVATURE_COMPARED``) is compared the same way, each its own Holm
family; where the comparable pairs' runs did not measure it the outcome is "not
measured".
Verdicts about the claim (a technique raises gamma and speeds convergence) are drawn
only along its techniques (``CLAIM_AXES``: the paper's activation, normalization, skip
connections and optimizer, and the transformer study's); any other axis is a stratum
whose effect is described, never counted as support.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd

import trajreg.principle as P
from trajreg.errors import DamagedRun
from trajreg.run.summary import Summary, trained
from trajreg.study import stats
from trajreg.study.layout import RunRecord
from trajreg.study.spec import (
    ReportOptions,
    Study,
    analysed_eps,
    is_series,
    label,
    uses_kappa,
)

FINISHED = ("done", "diverged")
SPEED = "auc_log_loss"
# the networks that have the skip connections model.skip switches (ModelConfig.skip)
SKIP_NETS = ("resnet", "unet", "gpt", "vit")
# the techniques: only comparisons along these axes are evidence for the claim (each
# technique raises gamma, and a larger gamma goes with faster training)
CLAIM_AXES = {"model.activation": "activation", "model.norm": "normalization",
              "model.skip": "skip connections", "optim.name": "optimizer",
              "optim": "optimizer",
              # the transformer study's techniques (presets/transformer-*.yaml): the
              # paper's question asked of today's training techniques
              "model.norm_position": "normalization position",
              "model.qk_norm": "QK normalization",
              "optim.warmup_steps": "learning-rate warmup",
              "train.grad_clip": "gradient clipping",
              "optim.weight_decay": "weight decay"}
AXIS_NAMES = {"optim.lr": "learning rate", "model.width": "width",
              "data.batch_size": "batch size", "model.dropout": "dropout",
              "model.depth": "depth", "model.init": "initialisation", "data": "data",
              "data.name": "data set", "optim.schedule": "lr schedule"}
# axes runs.csv shows in columns of their own anyway
SHOWN_AXES = {"model.activation", "model.norm", "model.skip", "optim.name", "optim.lr"}
SENSITIVITY_EPS = ("0.0", "0.05", "0.1")
LARGER, SMALLER, FASTER, SLOWER = "larger", "smaller", "faster", "slower"
INCONCLUSIVE, NOT_COMPARABLE = "inconclusive", "not comparable"
NOT_MEASURED = "not measured"  # a geometry or curvature measure no comparable pair recorded

RUN_COLUMNS = ["run_id", "block", "status", "trained", "reason", "architecture", "dataset",
               "activation", "norm", "skip", "optimizer", "lr", "threads", "seed",
               "checkpoints"]
SERIES = "checkpoints"  # architecture and dataset of a series whose measure says neither
RUN_METRIC_COLUMNS = ["gamma_hat_ci_halfwidth", "kappa_hat_ci_halfwidth", "gamma_bar",
                      "window_end", "final_loss", "steps_to_threshold", "auc_log_loss",
                      "diverged", "train_accuracy", "test_accuracy", "run_dir"]
# (short name in techniques.csv, runs.csv column; "{eps}" is the comparison's eps): each
# is compared by paired differences like gamma, each its own Holm family
GEOMETRY_COMPARED = (("mu", "mu_hat_{eps}"), ("L", "L_hat_{eps}"),
                     ("cos_g", "cos_g_positive"), ("path", "path_ratio"))
# record.curvature: runs.csv column -> its place in summary.json's curvature (the medians
# over the window, the fraction of sampled steps above the edge of stability, lambda_max
# at x*, the sampled steps in the window); nan for a run without curvature
CURVATURE_RUN = {"lambda_max": "median.lambda_max",
                 "lambda_max_precond": "median.lambda_max_precond",
                 "curv_update": "median.curv_update",
                 "critical_sharpness": "median.critical_sharpness",
                 "above_fraction": "above_fraction", "lambda_max_star": "lambda_max_star",
                 "curvature_steps": "steps_window"}
# compared like the geometry, each its own Holm family (the name is the runs.csv column
# and the techniques.csv prefix): does the technique lower sharpness?
# lambda_max_precond only between Adam-family runs (not measured elsewhere)
CURVATURE_COMPARED = ("lambda_max", "lambda_max_precond", "curv_update",
                      "critical_sharpness", "above_fraction", "lambda_max_star")
# the curvature correlated within strata with speed and with the comparison's metric
CURVATURE_CORRELATED = "lambda_max"
TECHNIQUE_COLUMNS = [
    "technique", "role", "axis", "block", "architecture", "dataset", "context", "with",
    "without", "metric", "n_pairs", "n_not_trained", "n",
    "gamma_with", "gamma_without", "diff_median", "diff_low", "diff_high", "p_value",
    "p_holm", "min_effect", "measurement_uncertainty", "larger_pairs", "smaller_pairs",
    "outcome_gamma",
    "speed_with", "speed_without", "speed_diff_median", "speed_diff_low", "speed_diff_high",
    "speed_p_value", "speed_p_holm", "speed_min_effect", "faster_pairs", "slower_pairs",
    "outcome_speed",
    "steps_diff_median", "steps_diff_low", "steps_diff_high", "steps_p_value",
    "steps_p_holm", "outcome_speed_steps",
    "note", "runs_with", "runs_without", "runs_not_trained",
    # the trajectory geometry compared the same way (GEOMETRY_COMPARED), e.g. mu_with ...
    # outcome_mu: does the technique raise mu_hat as it raises gamma? (nan without gradients)
    *[f"{short}_{part}" for short, _ in GEOMETRY_COMPARED
      for part in ("with", "without", "diff_median", "diff_low", "diff_high", "p_holm")],
    *[f"outcome_{short}" for short, _ in GEOMETRY_COMPARED],
    # fraction of the trained runs whose loss falls monotonically from x_0 to x*
    "mli_monotone_with", "mli_monotone_without",
    # the curvature compared the same way (CURVATURE_COMPARED), e.g. lambda_max_with ...
    # outcome_lambda_max: does the technique lower sharpness? ("not measured" without)
    *[f"{short}_{part}" for short in CURVATURE_COMPARED
      for part in ("with", "without", "diff_median", "diff_low", "diff_high", "p_holm")],
    *[f"outcome_{short}" for short in CURVATURE_COMPARED]]
# trajectory geometry (README "Trajectory geometry"); mu_hat, L_hat per eps; nan when absent
GEOMETRY_RUN_COLUMNS = ["cos_g_positive", "path_ratio", "mli_monotone"]


def architecture(config: Mapping[str, Any]) -> str:
    """The network of a resolved run config: its variant (vgg11, resnet20) or name."""
    model = config["model"]
    return model.get("variant") or model["name"]


def eps_keys(study: Study) -> list[str]:
    """Every eps the study's runs analyse, as summary keys ("0.0", "0.05")."""
    keys: list[str] = []
    for spec in study.runs:
        for e in analysed_eps(spec.config):
            k = str(float(e))
            if k not in keys:
                keys.append(k)
    return keys


def primary_eps(study: Study) -> str:
    """The report's eps as a summary key (``report: {eps: ...}``, default 0.05)."""
    return study.report.eps_key


def _dotted(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def extra_axes(study: Study) -> list[str]:
    """Grid axes (dotted keys into a section, and a series block's every axis: its
    free labels too) runs.csv shows in columns of their own."""
    out: list[str] = []
    for block in study.blocks:
        for axis in block.grid:
            shown = "." in axis or block.series is not None
            if shown and axis not in SHOWN_AXES and axis not in out:
                out.append(axis)
    return out


def run_trained(summary: Summary, margin: float | None) -> bool:
    """Whether a run trained: ``Summary.trained`` (the run's own analysis.train_margin),
    or recomputed at the study's ``report.train_margin`` when it sets one."""
    if margin is None:
        return summary.trained
    return trained(summary.full_loss, summary.diverged, margin)


def _ci_halfwidth(table: dict[str, list[float | None]] | None, eps: str) -> float:
    if not table or eps not in table:
        return math.nan
    low, high = table[eps]
    if low is None or high is None:
        return math.nan
    return (float(high) - float(low)) / 2


def runs_table(study: Study, records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """One row per run of the study (runs.csv): status done, diverged, damaged, failed
    or pending; ``trained`` (empty for runs without a summary); the estimates."""
    keys = eps_keys(study)
    eps = primary_eps(study)
    margin = study.report.train_margin
    axes = extra_axes(study)
    rows = []
    for spec in study.runs:
        c = spec.config
        rec = records.get(spec.run_id, RunRecord("pending"))
        s = rec.summary
        status = ("diverged" if s.diverged else "done") if s is not None else rec.state
        row: dict[str, Any] = {
            "run_id": spec.run_id, "block": " ".join(spec.blocks), "status": status,
            "trained": run_trained(s, margin) if s is not None else None,
            "reason": rec.reason, **(_series_columns(c, s) if is_series(c) else {
                "architecture": architecture(c),
                "dataset": c["data"]["name"], "activation": c["model"]["activation"],
                "norm": c["model"]["norm"],
                "skip": c["model"]["skip"] if c["model"]["name"] in SKIP_NETS else "",
                "optimizer": c["optim"]["name"], "lr": c["optim"]["lr"],
                "threads": c["train"].get("threads"), "checkpoints": ""}),
            "seed": c["seed"]}
        for axis in axes:
            value = _dotted(c, axis)
            row[axis] = label(value) if value is not None else ""
        for name in ("gamma_hat", "kappa_hat", "mu_hat", "L_hat"):
            table = getattr(s, name) if s is not None else None
            for k in keys:
                value = table.get(k, math.nan) if table else math.nan
                row[f"{name}_{k}"] = math.nan if value is None else value
        mli = s.mli if s is not None else None
        row.update({
            "cos_g_positive": s.cos_g_positive if s is not None and s.cos_g_positive is not None
            else math.nan,
            "path_ratio": s.path_ratio if s is not None and s.path_ratio is not None
            else math.nan,
            "mli_monotone": mli.get("monotone") if mli else None})
        row.update(curvature_columns(s))
        row.update({
            "gamma_hat_ci_halfwidth": _ci_halfwidth(s.gamma_hat_ci, eps) if s else math.nan,
            "kappa_hat_ci_halfwidth": _ci_halfwidth(s.kappa_hat_ci, eps) if s else math.nan,
            "gamma_bar": s.gamma_bar if s is not None and s.analysed else math.nan,
            "window_end": s.window[1] if s is not None and s.window else math.nan,
            "final_loss": s.final_loss if s is not None else math.nan,
            "steps_to_threshold": s.steps_to_threshold if s is not None else None,
            "auc_log_loss": s.auc_log_loss if s is not None else math.nan,
            "diverged": s.diverged if s is not None else None,
            # the generalization gap (the modular task's stratum in the transformer study)
            **{key: (s.evaluation or {}).get(key, math.nan) if s is not None else math.nan
               for key in ("train_accuracy", "test_accuracy")},
            "run_dir": f"runs/{spec.run_id}" if s is not None else "",
        })
        rows.append(row)
    metric_cols = [f"{n}_{k}" for n in ("gamma_hat", "kappa_hat") for k in keys]
    geometry = [f"{n}_{k}" for n in ("mu_hat", "L_hat") for k in keys] + GEOMETRY_RUN_COLUMNS
    return pd.DataFrame(rows, columns=RUN_COLUMNS + axes + metric_cols + RUN_METRIC_COLUMNS
                        + geometry + list(CURVATURE_RUN))


def curvature_columns(s: Summary | None) -> dict[str, float]:
    """runs.csv's curvature columns of one run (``CURVATURE_RUN``); nan for a run
    without ``record.curvature`` or a value it lacks (lambda_max_precond: Adam only)."""
    curv = (s.curvature if s is not None else None) or {}
    out = {}
    for column, key in CURVATURE_RUN.items():
        value = _dotted(curv, key)
        out[column] = math.nan if value is None else float(value)
    return out


def _series_columns(c: Mapping[str, Any], s: Summary | None) -> dict[str, Any]:
    """runs.csv's description of a checkpoint series: the network and data its measure
    named (``checkpoints`` until measured), the technique columns its axes set, and the
    checkpoints measured."""
    facts = (s.checkpoints or {}) if s is not None else {}

    def axis(key: str) -> Any:
        value = _dotted(c, key)
        return "" if value is None else value

    lr = _dotted(c, "optim.lr")
    return {"architecture": facts.get("architecture") or SERIES,
            "dataset": facts.get("dataset") or SERIES, "activation": axis("model.activation"),
            "norm": axis("model.norm"), "skip": axis("model.skip"),
            "optimizer": axis("optim.name"), "lr": math.nan if lr is None else lr,
            "threads": c["series"]["threads"], "checkpoints": "; ".join(c["series"]["paths"])}


def claim_technique(axis: str, with_value: Any, without_value: Any) -> str | None:
    """The paper's technique a comparison along ``axis`` is about, or None (a stratum).
    An ``optim`` axis of mappings is the optimizer only when the optimizers differ.

    >>> claim_technique("model.norm", "batch", "none")
    'normalization'
    >>> claim_technique("optim", {"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.01})
    >>> claim_technique("optim.lr", 0.1, 0.01)
    """
    if axis not in CLAIM_AXES:
        return None
    if axis == "optim":
        if not (isinstance(with_value, Mapping) and isinstance(without_value, Mapping)):
            return None
        if with_value.get("name", "sgd") == without_value.get("name", "sgd"):
            return None
    return CLAIM_AXES[axis]


@dataclass
class Comparison:
    """Runs with and without one setting, paired by seed, in one context of one block."""

    block: str
    axis: str
    with_value: Any
    without_value: Any
    context: dict[str, Any]
    pairs: list[tuple[int, str, str]]  # (seed, run with, run without), both finished
    metric: str  # runs-table column compared: gamma_hat_<eps> or kappa_hat_<eps>
    architecture: str
    dataset: str
    missing: list[tuple[int, str]] = field(default_factory=list)  # (seed, why) unpaired

    @property
    def claim(self) -> str | None:
        """The paper's technique this comparison is evidence about (None: a stratum)."""
        return claim_technique(self.axis, self.with_value, self.without_value)

    @property
    def technique(self) -> str:
        if self.claim:
            return self.claim
        return AXIS_NAMES.get(self.axis, self.axis)

    @property
    def kind(self) -> str:
        """``gamma`` or ``kappa``."""
        return self.metric.split("_", 1)[0]

    @property
    def stratum_key(self) -> tuple[str, str, str]:
        return (self.block, self.axis, repr(sorted(self.context.items())))

    @property
    def title(self) -> str:
        ctx = f"; {context_text(self.context)}" if self.context else ""
        return (f"{self.technique}: {label(self.with_value)} vs {label(self.without_value)} "
                f"on {self.architecture} ({self.dataset}{ctx}) [{self.block}]")

    @property
    def slug(self) -> str:
        ctx = "-".join(label(v) for v in self.context.values())
        text = f"{self.block}-{self.axis.split('.')[-1]}-{label(self.with_value)}-vs-" \
               f"{label(self.without_value)}" + (f"-{ctx}" if ctx else "")
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def context_text(context: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={label(v)}" for k, v in context.items())


def comparisons(study: Study, runs: pd.DataFrame) -> list[Comparison]:
    """Every comparison the study's blocks define, with its pairs of finished runs
    (and the seeds left unpaired, with the status that kept them out)."""
    status = dict(zip(runs["run_id"], runs["status"], strict=True))
    described = runs.set_index("run_id")[["architecture", "dataset"]]
    eps = primary_eps(study)
    out = []
    for block in study.blocks:
        for axis, (role, value) in block.compare.items():
            others = [v for v in block.grid[axis] if v != value]
            pairs_of = [(value, o) if role == "with" else (o, value) for o in others]
            contexts: dict[str, tuple[dict[str, Any], list[str]]] = {}  # key -> values, runs
            index: dict[tuple[str, str, int], str] = {}
            for rid, axes, seed in block.members:
                ctx = {k: v for k, v in axes.items() if k != axis}
                key = repr(sorted(ctx.items(), key=lambda kv: kv[0]))
                contexts.setdefault(key, (ctx, []))[1].append(rid)
                index[(key, repr(axes[axis]), seed)] = rid
            # a series' gamma is the epochwise one, free of the step size: never kappa
            kappa = uses_kappa(axis) and block.series is None
            metric = f"{'kappa' if kappa else 'gamma'}_hat_{eps}"
            for key, (ctx, rids) in contexts.items():
                # a series is described once measured: the first that is
                known = [r for r in rids if described.at[r, "architecture"] != SERIES]
                arch, data = described.loc[(known or rids)[0]]
                for w, wo in pairs_of:
                    pairs, missing = [], []
                    for seed in block.seeds:
                        a = index[(key, repr(w), seed)]
                        b = index[(key, repr(wo), seed)]
                        sa, sb = status.get(a, "pending"), status.get(b, "pending")
                        if sa in FINISHED and sb in FINISHED:
                            pairs.append((seed, a, b))
                        else:
                            why = [f"{r} {s}" for r, s in ((a, sa), (b, sb))
                                   if s not in FINISHED]
                            missing.append((seed, ", ".join(why)))
                    out.append(Comparison(block.name, axis, w, wo, ctx, pairs, metric,
                                          arch, data, missing))
    return out


# ----------------------------------------------------------------------------- outcomes

@dataclass
class Evaluation:
    """One comparison's paired differences of one measure, and its outcome."""

    n_pairs: int  # finished pairs
    not_trained: list[tuple[int, str]]  # (seed, runs that did not train)
    test: stats.PairedTest
    median_with: float
    median_without: float
    min_effect: float  # the absolute threshold |median difference| must clear
    uncertainty: float  # the runs' own measurement uncertainty (nan: not measured)
    p_holm: float = math.nan
    outcome: str = NOT_COMPARABLE
    why: str = ""  # why it is inconclusive or not comparable


Values = Callable[[str, str], tuple[float, float]]  # (run with, run without) -> values


def evaluate(comp: Comparison, values: Values, usable: Callable[[str], bool],
             options: ReportOptions, uncertainty: Callable[[str, str], float] | None = None,
             ) -> Evaluation:
    """The paired differences of one measure over the comparison's usable pairs (the
    outcome is set by ``decide`` once every comparison's p is known, for Holm)."""
    with_v, without_v, halfwidths, not_trained = [], [], [], []
    for seed, a, b in comp.pairs:
        if not (usable(a) and usable(b)):
            not_trained.append((seed, " ".join(r for r in (a, b) if not usable(r))))
            continue
        va, vb = values(a, b)
        with_v.append(va)
        without_v.append(vb)
        if uncertainty is not None:
            halfwidths.append(uncertainty(a, b))
    test = stats.paired_test(with_v, without_v)
    med_w = _median(with_v)
    med_wo = _median(without_v)
    finite = [abs(m) for m in (med_w, med_wo) if math.isfinite(m)]
    threshold = options.min_effect * max(finite) if finite else 0.0
    u = float(np.median(halfwidths)) if halfwidths and np.isfinite(halfwidths).all() \
        else math.nan
    ev = Evaluation(len(comp.pairs), not_trained, test, med_w, med_wo, threshold, u)
    if not comp.pairs:
        ev.why = "no finished pair of runs"
    elif test.n == 0:
        ev.why = (f"in all {len(comp.pairs)} pairs a run did not train" if not_trained
                  else "no pair has a value")
    return ev


def _median(v: list[float]) -> float:
    a = np.asarray(v, float)
    a = a[~np.isnan(a)]
    return float(np.median(a)) if len(a) else math.nan


def decide(evaluations: list[Evaluation], options: ReportOptions,
           words: tuple[str, str]) -> None:
    """Set each evaluation's Holm-adjusted p and outcome: ``words[0]`` for a decided
    positive median difference, ``words[1]`` for a negative one (the rule is in this
    module's docstring). The Holm family is every evaluation with a test."""
    p = [ev.test.p_value if ev.test.n else math.nan for ev in evaluations]
    for ev, p_adj in zip(evaluations, stats.holm(p), strict=True):
        ev.p_holm = float(p_adj)
        t = ev.test
        if t.n == 0:
            ev.outcome = NOT_COMPARABLE
            continue
        reasons = []
        if stats.smallest_p(t.n) >= options.alpha:
            reasons.append(f"{t.n} pairs cannot be decided: the smallest sign-test p they "
                           f"can give is {stats.smallest_p(t.n):.3g} >= alpha "
                           f"{options.alpha:g}")
        elif not ev.p_holm < options.alpha:
            reasons.append(f"Holm-corrected p {ev.p_holm:.3g} >= alpha {options.alpha:g}")
        if not (t.low > 0 or t.high < 0):
            reasons.append("the interval of the median difference includes 0")
        if not abs(t.median) >= ev.min_effect:
            reasons.append(f"|median difference| {abs(t.median):.3g} is below the minimum "
                           f"effect {ev.min_effect:.3g}")
        if math.isfinite(ev.uncertainty) and not abs(t.median) > ev.uncertainty:
            reasons.append(f"|median difference| {abs(t.median):.3g} is within the runs' "
                           f"measurement uncertainty {ev.uncertainty:.3g}")
        if reasons:
            ev.outcome, ev.why = INCONCLUSIVE, "; ".join(reasons)
        else:
            ev.outcome = words[0] if t.median > 0 else words[1]


class RunValues:
    """Per-run numbers of a runs table, by run id (nan for a missing value)."""

    def __init__(self, runs: pd.DataFrame) -> None:
        self.runs = runs.set_index("run_id")

    def get(self, rid: str, column: str) -> float:
        if column not in self.runs.columns:
            return math.nan
        v = self.runs.at[rid, column]
        return math.nan if v is None or (isinstance(v, str) and not v) else float(v)

    def trained(self, rid: str) -> bool:
        return _true(self.runs.at[rid, "trained"])

    def pair(self, column: str) -> Values:
        return lambda a, b: (self.get(a, column), self.get(b, column))


def steps_values(curves: Mapping[str, tuple[list[float], list[int]]]) -> Values:
    """Steps until each run's full training loss first reaches the pair's common
    threshold: the larger of the two runs' final losses (so both reach it)."""
    def values(a: str, b: str) -> tuple[float, float]:
        (fa, ea), (fb, eb) = curves[a], curves[b]
        threshold = max(fa[-1], fb[-1])
        if not math.isfinite(threshold):
            return math.nan, math.nan
        sa = P.steps_to_threshold(fa, ea, threshold)[0]
        sb = P.steps_to_threshold(fb, eb, threshold)[0]
        return (math.nan if sa is None else float(sa), math.nan if sb is None else float(sb))
    return values


def techniques_table(runs: pd.DataFrame, comps: list[Comparison], options: ReportOptions,
                     curves: Mapping[str, tuple[list[float], list[int]]] | None = None,
                     ) -> pd.DataFrame:
    """One row per comparison (techniques.csv): the metric's and the speed's paired
    differences with their intervals, p-values and outcomes. ``curves`` (run id ->
    full_loss, epoch_ends) adds speed as steps to a common loss threshold."""
    rv = RunValues(runs)

    def halfwidths(c: Comparison) -> Callable[[str, str], float]:
        return lambda a, b: (rv.get(a, f"{c.kind}_hat_ci_halfwidth")
                             + rv.get(b, f"{c.kind}_hat_ci_halfwidth"))

    metric = [evaluate(c, rv.pair(c.metric), rv.trained, options, halfwidths(c))
              for c in comps]
    speed = [evaluate(c, rv.pair(SPEED), rv.trained, options) for c in comps]
    # the geometry at the metric's eps (gamma_hat_<eps>, kappa_hat_<eps>)
    geometry = {short: [evaluate(c, rv.pair(column.format(eps=c.metric.rsplit("_", 1)[-1])),
                                 rv.trained, options) for c in comps]
                for short, column in GEOMETRY_COMPARED}
    decide(metric, options, (LARGER, SMALLER))
    decide(speed, options, (SLOWER, FASTER))  # a larger auc is slower
    curvature = {short: [evaluate(c, rv.pair(short), rv.trained, options) for c in comps]
                 for short in CURVATURE_COMPARED}
    for evaluations in [*geometry.values(), *curvature.values()]:
        decide(evaluations, options, (LARGER, SMALLER))
        for ev in evaluations:
            if ev.test.n == 0 and len(ev.not_trained) < ev.n_pairs:
                # comparable pairs, but the runs recorded no gradients (mu_hat, L_hat,
                # cos_g) or no curvature: nothing to compare, not a run that did not train
                ev.outcome = NOT_MEASURED
    steps: list[Evaluation | None] = [None] * len(comps)
    if curves is not None:
        steps = [evaluate(c, steps_values(curves), rv.trained, options) for c in comps]
        decide(cast("list[Evaluation]", steps), options, (SLOWER, FASTER))
    rows = []
    for i, (c, g, s, st) in enumerate(zip(comps, metric, speed, steps, strict=True)):
        rows.append({
            "technique": c.technique, "role": "claim" if c.claim else "stratum",
            "axis": c.axis, "block": c.block, "architecture": c.architecture,
            "dataset": c.dataset, "context": context_text(c.context),
            "with": label(c.with_value), "without": label(c.without_value),
            "metric": c.metric, "n_pairs": g.n_pairs, "n_not_trained": len(g.not_trained),
            "n": g.test.n,
            "gamma_with": g.median_with, "gamma_without": g.median_without,
            "diff_median": g.test.median, "diff_low": g.test.low, "diff_high": g.test.high,
            "p_value": g.test.p_value, "p_holm": g.p_holm, "min_effect": g.min_effect,
            "measurement_uncertainty": g.uncertainty,
            "larger_pairs": g.test.larger, "smaller_pairs": g.test.smaller,
            "outcome_gamma": g.outcome,
            "speed_with": s.median_with, "speed_without": s.median_without,
            "speed_diff_median": s.test.median, "speed_diff_low": s.test.low,
            "speed_diff_high": s.test.high, "speed_p_value": s.test.p_value,
            "speed_p_holm": s.p_holm, "speed_min_effect": s.min_effect,
            "faster_pairs": s.test.smaller, "slower_pairs": s.test.larger,
            "outcome_speed": s.outcome,
            "steps_diff_median": st.test.median if st else math.nan,
            "steps_diff_low": st.test.low if st else math.nan,
            "steps_diff_high": st.test.high if st else math.nan,
            "steps_p_value": st.test.p_value if st else math.nan,
            "steps_p_holm": st.p_holm if st else math.nan,
            "outcome_speed_steps": st.outcome if st else "n/a",
            "note": _note(c, g, s),
            "runs_with": " ".join(p[1] for p in c.pairs),
            "runs_without": " ".join(p[2] for p in c.pairs),
            "runs_not_trained": " ".join(r for _, rs in g.not_trained for r in rs.split()),
            **{key: value for short, evaluations in geometry.items()
               for key, value in _geometry_row(short, evaluations[i]).items()},
            "mli_monotone_with": _fraction(rv, [p[1] for p in c.pairs], "mli_monotone"),
            "mli_monotone_without": _fraction(rv, [p[2] for p in c.pairs], "mli_monotone"),
            **{key: value for short, evaluations in curvature.items()
               for key, value in _geometry_row(short, evaluations[i]).items()},
        })
    return pd.DataFrame(rows, columns=TECHNIQUE_COLUMNS)


def _geometry_row(short: str, m: Evaluation) -> dict[str, Any]:
    return {f"{short}_with": m.median_with, f"{short}_without": m.median_without,
            f"{short}_diff_median": m.test.median, f"{short}_diff_low": m.test.low,
            f"{short}_diff_high": m.test.high, f"{short}_p_holm": m.p_holm,
            f"outcome_{short}": m.outcome}


def _fraction(rv: RunValues, run_ids: list[str], column: str) -> float:
    """The fraction of the trained runs among ``run_ids`` where ``column`` is true; nan
    where no trained run has a value."""
    values = [rv.get(rid, column) for rid in run_ids if rv.trained(rid)]
    known = [v for v in values if math.isfinite(v)]
    return float(np.mean(known)) if known else math.nan


def _note(c: Comparison, g: Evaluation, s: Evaluation) -> str:
    parts = []
    if g.why:
        parts.append(f"{c.kind}: {g.why}")
    if s.why:
        parts.append(f"speed: {s.why}")
    if g.not_trained:
        parts.append("not comparable pairs (a run did not train): "
                     + ", ".join(f"seed {seed}" for seed, _ in g.not_trained))
    if c.missing:
        parts.append("unpaired seeds: " + "; ".join(f"seed {seed} ({why})"
                                                    for seed, why in c.missing))
    if not c.claim:
        parts.append("a stratum, not one of the claim's techniques: described, not "
                     "evidence for the claim")
    return ". ".join(parts)


# ----------------------------------------------------------------------------- sensitivity

def _summary_value(s: Summary, kind: str, eps: str) -> float:
    table = (s.sensitivity or {}).get(f"{kind}_hat") or getattr(s, f"{kind}_hat") or {}
    v = table.get(eps)
    return math.nan if v is None else float(v)


def _reference_best(s: Summary, kind: str, eps: str) -> float | None:
    best = (s.sensitivity or {}).get("reference_best")
    if not best:
        return None
    v = (best.get(f"{kind}_hat") or {}).get(eps)
    return math.nan if v is None else float(v)


def window_value(metrics: pd.DataFrame, end: int, kind: str, eps: float) -> float:
    """gamma_hat (or kappa_hat) of one run over the steps [0, end) of its metrics table,
    delta = eta / 2 (the principle's default); nan when the steps lack a, b or s."""
    part = metrics[metrics["step"] < end]  # one-pass modes hold only the sampled steps
    if not len(part):
        return math.nan
    a, b, s, lr = (part[col].to_numpy(float) for col in ("a", "b", "s", "lr"))
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(s).all()):
        return math.nan
    if kind == "kappa":
        return float(P.kappa_hat(a, b, s, lr, eps))
    return float(P.gamma_hat(a, b, s, P.default_delta(lr), eps))


def series_window_value(metrics: pd.DataFrame, end: int, eps: float) -> float:
    """gamma_hat of a checkpoint series over its checkpoint rows [0, end), as the series
    was measured (epochwise, delta 0, x* itself left out); nan without a, b or s."""
    part = metrics.iloc[:end]
    part = part[part["D"] > 0]  # x*: D = b = 0, nothing to measure
    if not len(part):
        return math.nan
    a, b, s = (part[col].to_numpy(float) for col in ("a", "b", "s"))
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(s).all()):
        return math.nan
    return float(P.gamma_hat(a, b, s, 0.0, eps))


SENSITIVITY_COLUMNS = ["technique", "role", "block", "architecture", "dataset", "context",
                       "with", "without", "metric", "outcome_gamma", "window",
                       "window_diff_median", *(f"eps_{e}" for e in SENSITIVITY_EPS),
                       *(f"eps_{e}_diff_median" for e in SENSITIVITY_EPS), "reference_best",
                       "reference_best_diff_median", "survives", "outcome_speed",
                       "outcome_speed_steps", "speed_survives"]


def sensitivity_table(tech: pd.DataFrame, comps: list[Comparison], runs: pd.DataFrame,
                      summaries: Mapping[str, Summary], options: ReportOptions,
                      read_metrics: Callable[[str], pd.DataFrame]) -> pd.DataFrame:
    """Each comparison's metric outcome recomputed (a) on one window shared by the two
    runs of a pair (the shorter of their converging windows, gamma_hat recomputed from
    metrics.parquet; a checkpoint series' over its checkpoint rows), (b) at eps 0,
    0.05, 0.1, (c) against the best iterate as the reference ("n/a" when the runs'
    record mode cannot do it without retraining);
    ``survives`` says whether the decided outcome is the same under every variant."""
    rv = RunValues(runs)
    eps = options.eps_key
    cache: dict[str, pd.DataFrame | None] = {}

    def metrics(rid: str) -> pd.DataFrame | None:
        if rid not in cache:
            try:
                cache[rid] = read_metrics(rid)
            except DamagedRun:  # this variant is n/a for the run's pairs
                cache[rid] = None
        return cache[rid]

    def windowed(kind: str) -> Values:
        def values(a: str, b: str) -> tuple[float, float]:
            wa, wb = summaries[a].window, summaries[b].window
            ma, mb = metrics(a), metrics(b)
            if not wa or not wb or ma is None or mb is None:
                return math.nan, math.nan
            end = min(wa[1], wb[1])
            series = [summaries[r].checkpoints is not None for r in (a, b)]
            if any(series):  # windows in checkpoint rows, not steps
                if not all(series):
                    return math.nan, math.nan
                return (series_window_value(ma, end, options.eps),
                        series_window_value(mb, end, options.eps))
            return (window_value(ma, end, kind, options.eps),
                    window_value(mb, end, kind, options.eps))
        return values

    def at_eps(kind: str, e: str) -> Values:
        return lambda a, b: (_summary_value(summaries[a], kind, e),
                             _summary_value(summaries[b], kind, e))

    def best(kind: str) -> Values:
        def values(a: str, b: str) -> tuple[float, float]:
            va = _reference_best(summaries[a], kind, eps)
            vb = _reference_best(summaries[b], kind, eps)
            return (math.nan if va is None else va, math.nan if vb is None else vb)
        return values

    variants: dict[str, Callable[[str], Values]] = {
        "window": windowed,
        **{f"eps_{e}": functools.partial(at_eps, e=e) for e in SENSITIVITY_EPS},
        "reference_best": best,
    }
    results: dict[str, list[Evaluation]] = {}
    for name, make in variants.items():
        evs = [evaluate(c, make(c.kind), rv.trained, options) for c in comps]
        decide(evs, options, (LARGER, SMALLER))
        results[name] = evs
    rows = []
    for i, (c, row) in enumerate(zip(comps, tech.itertuples(index=False), strict=True)):
        out: dict[str, Any] = {
            "technique": c.technique, "role": row.role, "block": c.block,
            "architecture": c.architecture, "dataset": c.dataset,
            "context": context_text(c.context), "with": label(c.with_value),
            "without": label(c.without_value), "metric": c.metric,
            "outcome_gamma": row.outcome_gamma}
        changed = []
        for name, evs in results.items():
            ev = evs[i]
            if row.n == 0:
                word = NOT_COMPARABLE
            elif ev.test.n == 0:
                word = "n/a"  # the runs lack this variant's values (e.g. reference best)
            else:
                word = ev.outcome
            out[name] = word
            out[f"{name}_diff_median"] = ev.test.median
            if row.outcome_gamma in (LARGER, SMALLER) and word not in ("n/a",
                                                                        row.outcome_gamma):
                changed.append(f"{name}: {word}")
        if row.outcome_gamma not in (LARGER, SMALLER):
            out["survives"] = "not decided"
        else:
            out["survives"] = "yes" if not changed else "no (" + "; ".join(changed) + ")"
        out["outcome_speed"] = row.outcome_speed
        out["outcome_speed_steps"] = row.outcome_speed_steps
        if row.outcome_speed not in (FASTER, SLOWER):
            out["speed_survives"] = "not decided"
        elif row.outcome_speed_steps in ("n/a", row.outcome_speed):
            out["speed_survives"] = "yes"
        else:
            out["speed_survives"] = f"no (steps to a common loss: {row.outcome_speed_steps})"
        rows.append(out)
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


# ----------------------------------------------------------------------------- correlation

CORRELATION_COLUMNS = ["scope", "technique", "block", "architecture", "dataset", "optimizer",
                       "lr", "context", "varies", "metric", "against", "n", "spearman_rho",
                       "ci_low", "ci_high", "note"]
MIN_STRATUM = 4
SPEED_AGAINST = "speed"  # -auc_log_loss: rho > 0, the larger the metric the faster


def _one(values: pd.Series) -> str:
    distinct = sorted({label(v) for v in values})
    return distinct[0] if len(distinct) == 1 else "varies"


def correlation_table(study: Study, runs: pd.DataFrame, comps: list[Comparison],
                      options: ReportOptions) -> pd.DataFrame:
    """Spearman's rho between the metric and convergence speed (-auc_log_loss, so that
    rho > 0 means larger gamma goes with faster convergence) over the trained runs of
    each stratum: the runs of one comparison's context, which differ only in the
    compared setting and the seed (no rho below 4 runs), and the same rho for each
    trajectory-geometry metric (mu_hat, L_hat, cos_g_positive, path_ratio; nan without
    recorded gradients); then the n-weighted mean of
    the claim's techniques' within-stratum rhos, bootstrapped over strata; then the
    rho over all trained runs, with a warning when they differ in learning rate.
    ``against`` names the other variable. Where some run measured ``record.curvature``,
    each stratum also has the rho of the median lambda_max with speed and with the
    comparison's metric (rho < 0: lower sharpness goes with faster convergence, or with
    larger gamma), each pooled like gamma's."""
    ok = runs[runs["status"].isin(FINISHED) & runs["trained"].map(_true)]
    members = {b.name: b.members for b in study.blocks}
    sharp = CURVATURE_CORRELATED
    curvature = sharp in ok.columns and bool(np.isfinite(ok[sharp].to_numpy(float)).any())
    rows = []
    # pooled family -> (rho, n) of the claim's strata: gamma's (or kappa's) with speed,
    # and with curvature lambda_max's with speed and with the comparison's metric
    pooled: dict[str, list[tuple[float, int]]] = {"metric": [], "sharp~speed": [],
                                                  "sharp~metric": []}
    metrics_pooled: list[str] = []  # the metrics lambda_max was pooled against
    seen: set[tuple[str, str, str]] = set()
    for c in comps:
        if c.stratum_key in seen:
            continue
        seen.add(c.stratum_key)
        ids = [rid for rid, axes, _ in members[c.block]
               if all(axes.get(k) == v for k, v in c.context.items())]
        part = ok[ok["run_id"].isin(ids)]
        eps = c.metric.rsplit("_", 1)[-1]
        # gamma's rho first, then the geometry's (not pooled), then the curvature's
        wanted: list[tuple[str, str, str | None]] = [(c.metric, SPEED_AGAINST, "metric")]
        wanted += [(column.format(eps=eps), SPEED_AGAINST, None)
                   for _, column in GEOMETRY_COMPARED]
        if curvature:
            wanted += [(sharp, SPEED_AGAINST, "sharp~speed"), (sharp, c.metric, "sharp~metric")]
        for metric, against, family in wanted:
            corr = stats.spearman_ci(_column(part, metric), _column(part, against),
                                     min_n=MIN_STRATUM)
            notes = [] if corr.n >= MIN_STRATUM else [f"n < {MIN_STRATUM}: no rho"]
            if family is None:
                notes.append("trajectory geometry: not pooled")
            elif c.claim and math.isfinite(corr.rho):
                pooled[family].append((corr.rho, corr.n))
                if family == "sharp~metric" and against not in metrics_pooled:
                    metrics_pooled.append(against)
            if not c.claim:
                notes.append("not one of the claim's techniques: not pooled")
            rows.append({"scope": "stratum", "technique": c.technique, "block": c.block,
                         "architecture": c.architecture, "dataset": c.dataset,
                         "optimizer": _one(part["optimizer"]) if len(part) else "",
                         "lr": _one(part["lr"]) if len(part) else "",
                         "context": context_text(c.context), "varies": f"{c.axis}, seed",
                         "metric": metric, "against": against, "n": corr.n,
                         "spearman_rho": corr.rho, "ci_low": corr.low, "ci_high": corr.high,
                         "note": "; ".join(notes)})
    families = [("metric", "", SPEED_AGAINST)]
    if curvature:
        families += [("sharp~speed", sharp, SPEED_AGAINST),
                     ("sharp~metric", sharp, " or ".join(metrics_pooled) or "the metric")]
    for family, metric, against in families:
        found = pooled[family]
        p = stats.pooled_rho([r for r, _ in found], [n for _, n in found])
        rows.append({"scope": "pooled", "technique": "the claim's techniques", "block": "",
                     "architecture": "", "dataset": "", "optimizer": "", "lr": "",
                     "context": "", "varies": "within strata only", "metric": metric,
                     "against": against, "n": p.n, "spearman_rho": p.rho, "ci_low": p.low,
                     "ci_high": p.high,
                     "note": f"n-weighted mean of {len(found)} within-stratum rhos; "
                             "interval: bootstrap over strata"})
    metric = f"gamma_hat_{options.eps_key}"
    corr = stats.spearman_ci(ok[metric].to_numpy(float), -ok[SPEED].to_numpy(float),
                             min_n=MIN_STRATUM)
    lrs = ok["lr"].nunique()
    rows.append({"scope": "all runs", "technique": "", "block": "", "architecture": "",
                 "dataset": "", "optimizer": _one(ok["optimizer"]) if len(ok) else "",
                 "lr": _one(ok["lr"]) if len(ok) else "", "context": "",
                 "varies": "everything", "metric": metric, "against": SPEED_AGAINST,
                 "n": corr.n,
                 "spearman_rho": corr.rho, "ci_low": corr.low, "ci_high": corr.high,
                 "note": ("WARNING: the runs differ in learning rate (which scales gamma and "
                          "speed alike) and in network and data: this pooled rho mixes "
                          "strata and is no evidence; see the within-stratum rows"
                          if lrs > 1 else "mixes networks and data sets; see the "
                          "within-stratum rows")})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def _column(part: pd.DataFrame, name: str) -> np.ndarray:
    """A runs-table column as floats (speed: -auc_log_loss); nan where it is absent."""
    if name == SPEED_AGAINST:
        return -part[SPEED].to_numpy(float)
    if name not in part.columns:
        return np.full(len(part), np.nan)
    return part[name].to_numpy(float)


def _true(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v) \
        and str(v) != "False"
