"""The report's tables as DataFrames: runs.csv, the comparisons, techniques.csv and
the rank correlations. Pure: run records in, tables out, no files.

Comparisons. In each block, for each grid axis with a comparison direction
(``spec.DEFAULT_COMPARE`` or the study's ``compare``), runs are matched that differ
*only* in that axis: same values of every other axis and the same seed. The metric
is gamma_hat at the report's eps (default 0.05), or kappa_hat = eta * gamma_hat for
axes of the optimizer (``optim.*``), whose runs take steps of different sizes.
Convergence speed is ``auc_log_loss``, the mean log full training loss over the
epochs (lower is faster).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trajreg.study.layout import RunRecord
from trajreg.study.spec import Study, label, uses_kappa
from trajreg.study.stats import Correlation, paired, spearman_bootstrap

RUN_COLUMNS = ["run_id", "block", "status", "reason", "architecture", "dataset", "activation",
               "norm", "skip", "optimizer", "lr", "seed"]
METRIC_COLUMNS = ["gamma_bar", "window_end", "final_loss", "steps_to_threshold",
                  "auc_log_loss", "diverged", "run_dir"]
TECHNIQUE_COLUMNS = ["technique", "architecture", "with", "without", "gamma_with",
                     "gamma_without", "speed_with", "speed_without", "gamma_larger", "faster",
                     "n_seeds", "gamma_larger_seeds", "faster_seeds", "metric", "speed_measure",
                     "block", "dataset", "context", "runs_with", "runs_without"]
SPEED = "auc_log_loss"
TECHNIQUE_NAMES = {"model.activation": "activation", "model.norm": "normalization",
                   "model.skip": "skip connections", "optim.name": "optimizer",
                   "optim": "optimizer",
                   "model.dropout": "dropout", "optim.lr": "learning rate"}
FINISHED = ("done", "diverged")
# the networks that have the skip connections model.skip switches (ModelConfig.skip)
SKIP_NETS = ("resnet", "unet")


def architecture(config: dict[str, Any]) -> str:
    """The network of a resolved run config: its variant (vgg11, resnet20) or name."""
    model = config["model"]
    return model.get("variant") or model["name"]


def eps_keys(study: Study) -> list[str]:
    """Every eps the study's runs analyse, as summary keys ("0.0", "0.05")."""
    keys: list[str] = []
    for spec in study.runs:
        for e in spec.config["analysis"]["eps"]:
            k = str(float(e))
            if k not in keys:
                keys.append(k)
    return keys


def primary_eps(study: Study) -> str:
    """The report's eps as a summary key (``report: {eps: ...}``, default 0.05)."""
    return study.report.eps_key


def runs_table(study: Study, records: dict[str, RunRecord]) -> pd.DataFrame:
    """One row per run of the study (runs.csv); unfinished runs have status 'pending'."""
    keys = eps_keys(study)
    rows = []
    for spec in study.runs:
        c = spec.config
        rec = records.get(spec.run_id, RunRecord("pending"))
        s = rec.summary
        status = ("diverged" if s.diverged else "done") if s is not None else rec.state
        row = {"run_id": spec.run_id, "block": " ".join(spec.blocks), "status": status,
               "reason": rec.reason,
               "architecture": architecture(c), "dataset": c["data"]["name"],
               "activation": c["model"]["activation"], "norm": c["model"]["norm"],
               "skip": c["model"]["skip"] if c["model"]["name"] in SKIP_NETS else "",
               "optimizer": c["optim"]["name"],
               "lr": c["optim"]["lr"], "seed": c["seed"]}
        for name in ("gamma_hat", "kappa_hat"):
            table = getattr(s, name) if s is not None else None
            for k in keys:
                row[f"{name}_{k}"] = table.get(k, math.nan) if table else math.nan
        row.update({
            "gamma_bar": s.gamma_bar if s is not None and s.analysed else math.nan,
            "window_end": s.window[1] if s is not None and s.window else math.nan,
            "final_loss": s.final_loss if s is not None else math.nan,
            "steps_to_threshold": s.steps_to_threshold if s is not None else None,
            "auc_log_loss": s.auc_log_loss if s is not None else math.nan,
            "diverged": s.diverged if s is not None else None,
            "run_dir": f"runs/{spec.run_id}" if s is not None else "",
        })
        rows.append(row)
    metric_cols = [f"{n}_{k}" for n in ("gamma_hat", "kappa_hat") for k in keys]
    return pd.DataFrame(rows, columns=RUN_COLUMNS + metric_cols + METRIC_COLUMNS)


@dataclass
class Comparison:
    """Matched runs with and without one technique, in one context of one block."""

    block: str
    axis: str
    with_value: Any
    without_value: Any
    context: dict[str, Any]
    pairs: list[tuple[int, str, str]]  # (seed, run with, run without), both finished
    metric: str
    architecture: str
    dataset: str

    @property
    def technique(self) -> str:
        return TECHNIQUE_NAMES.get(self.axis, self.axis)

    @property
    def slug(self) -> str:
        ctx = "-".join(label(v) for v in self.context.values())
        text = f"{self.block}-{self.axis.split('.')[-1]}-{label(self.with_value)}-vs-" \
               f"{label(self.without_value)}" + (f"-{ctx}" if ctx else "")
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def comparisons(study: Study, runs: pd.DataFrame) -> list[Comparison]:
    """Every comparison the study's blocks define, with its matched finished runs."""
    finished = set(runs.loc[runs["status"].isin(FINISHED), "run_id"])
    eps = primary_eps(study)
    out = []
    for block in study.blocks:
        for axis, (role, value) in block.compare.items():
            others = [v for v in block.grid[axis] if v != value]
            pairs_of = [(value, o) if role == "with" else (o, value) for o in others]
            contexts: dict[str, tuple[dict[str, Any], str]] = {}  # key -> (values, a run)
            index: dict[tuple[str, str, int], str] = {}
            for rid, axes, seed in block.members:
                ctx = {k: v for k, v in axes.items() if k != axis}
                key = repr(sorted(ctx.items(), key=lambda kv: kv[0]))
                contexts.setdefault(key, (ctx, rid))
                index[(key, repr(axes[axis]), seed)] = rid
            for key, (ctx, some_run) in contexts.items():
                first = study.run(some_run).config
                for w, wo in pairs_of:
                    pairs = []
                    for seed in block.seeds:
                        a = index.get((key, repr(w), seed))
                        b = index.get((key, repr(wo), seed))
                        if a in finished and b in finished:
                            pairs.append((seed, a, b))
                    metric = f"{'kappa' if uses_kappa(axis) else 'gamma'}_hat_{eps}"
                    out.append(Comparison(block.name, axis, w, wo, ctx, pairs, metric,
                                          architecture(first), first["data"]["name"]))
    return out


def _values(runs: pd.DataFrame, ids: list[str], column: str) -> np.ndarray:
    by_id = runs.set_index("run_id")[column]
    return np.array([float(by_id[i]) if by_id[i] is not None else math.nan for i in ids],
                    dtype=float)


def _speed(runs: pd.DataFrame, ids: list[str]) -> np.ndarray:
    # a run whose loss became non-finite has no auc: it is the slowest of all
    v = _values(runs, ids, SPEED)
    return np.where(np.isnan(v), np.inf, v)


def techniques_table(runs: pd.DataFrame, comps: list[Comparison]) -> pd.DataFrame:
    """One row per comparison (techniques.csv)."""
    rows = []
    for comp in comps:
        with_ids = [p[1] for p in comp.pairs]
        without_ids = [p[2] for p in comp.pairs]
        g = paired(_values(runs, with_ids, comp.metric), _values(runs, without_ids, comp.metric))
        # lower auc is faster: compare the negated values
        sp = paired(-_speed(runs, with_ids), -_speed(runs, without_ids))
        rows.append({
            "technique": comp.technique,
            "architecture": comp.architecture,
            "with": label(comp.with_value), "without": label(comp.without_value),
            "gamma_with": g.median_with, "gamma_without": g.median_without,
            "speed_with": -sp.median_with if sp.n else math.nan,
            "speed_without": -sp.median_without if sp.n else math.nan,
            "gamma_larger": bool(g.n and g.median_with > g.median_without),
            "faster": bool(sp.n and sp.median_with > sp.median_without),
            "n_seeds": len(comp.pairs),
            "gamma_larger_seeds": g.larger, "faster_seeds": sp.larger,
            "metric": comp.metric, "speed_measure": f"{SPEED} (median; lower is faster)",
            "block": comp.block,
            "dataset": comp.dataset,
            "context": ", ".join(f"{k}={label(v)}" for k, v in comp.context.items()),
            "runs_with": " ".join(with_ids), "runs_without": " ".join(without_ids),
        })
    return pd.DataFrame(rows, columns=TECHNIQUE_COLUMNS)


def correlations(study: Study, runs: pd.DataFrame) -> list[tuple[str, str, Correlation]]:
    """Spearman's rho between gamma_hat (and kappa_hat) and convergence speed (-auc)
    over all finished runs, and within each block."""
    eps = primary_eps(study)
    ok = runs[runs["status"].isin(FINISHED)]
    out = []
    scopes = [("all runs", ok)]
    for block in study.blocks:
        ids = {m[0] for m in block.members}
        scopes.append((f"block {block.name}", ok[ok["run_id"].isin(ids)]))
    for scope, part in scopes:
        speed = -_speed(part, list(part["run_id"]))
        for metric in (f"gamma_hat_{eps}", f"kappa_hat_{eps}"):
            if metric in part:
                x = part[metric].to_numpy(dtype=float)
                out.append((scope, metric, spearman_bootstrap(x, speed)))
    return out


def correlation_table(corr: list[tuple[str, str, Correlation]]) -> pd.DataFrame:
    return pd.DataFrame([{"scope": s, "metric": m, "spearman_rho": c.rho, "ci_low": c.low,
                          "ci_high": c.high, "n_runs": c.n} for s, m, c in corr],
                        columns=["scope", "metric", "spearman_rho", "ci_low", "ci_high",
                                 "n_runs"])
