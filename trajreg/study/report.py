"""The study report: runs.csv, techniques.csv, figures and a self-contained report.html.

Everything is computed from the run directories (``summary.json``) and the study
file, so ``trajreg report STUDY_DIR`` redraws it at any time, on a partial study too.

Comparisons. In each block, for each grid axis with a comparison direction
(``spec.DEFAULT_COMPARE`` or the study's ``compare``), runs are matched that differ
*only* in that axis: same values of every other axis and the same seed. The metric
is gamma_hat at the report's eps (default 0.05), or kappa_hat = eta * gamma_hat for
axes of the optimizer (``optim.*``), whose runs take steps of different sizes.
Convergence speed is ``auc_log_loss``, the mean log full training loss over the
epochs (lower is faster). Each side is summarised by its median over seeds, and
the matched seeds are counted where the technique's side is larger (gamma) or
lower (auc).
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trajreg.run.figures import save_png
from trajreg.run.rundir import read_json, replace_atomic
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


def _architecture(config: dict[str, Any]) -> str:
    model = config["model"]
    return model.get("variant") or model["name"]


def eps_keys(study: Study) -> list[str]:
    keys: list[str] = []
    for spec in study.runs:
        for e in spec.config["analysis"]["eps"]:
            k = str(float(e))
            if k not in keys:
                keys.append(k)
    return keys


def primary_eps(study: Study) -> str:
    return str(float(study.report.get("eps", 0.05)))


def load_summaries(study_dir: Path, study: Study) -> dict[str, dict | str]:
    """run_id -> summary.json of finished runs, or the failure reason of failed ones."""
    from trajreg.study.execute import failure_reason, run_state, runs_dir

    out: dict[str, dict | str] = {}
    for spec in study.runs:
        state = run_state(study_dir, spec.run_id)
        if state == "done":
            out[spec.run_id] = read_json(runs_dir(study_dir) / spec.run_id / "summary.json")
        elif state == "failed":
            out[spec.run_id] = failure_reason(study_dir, spec.run_id)
    return out


def runs_table(study: Study, summaries: dict[str, dict | str]) -> pd.DataFrame:
    """One row per run of the study (runs.csv); unfinished runs have status 'pending'."""
    keys = eps_keys(study)
    rows = []
    for spec in study.runs:
        c = spec.config
        s = summaries.get(spec.run_id)
        row = {"run_id": spec.run_id, "block": " ".join(spec.blocks),
               "status": "pending" if s is None else "failed" if isinstance(s, str) else
               "diverged" if s.get("diverged") else "done",
               "reason": s if isinstance(s, str) else "",
               "architecture": _architecture(c), "dataset": c["data"]["name"],
               "activation": c["model"]["activation"], "norm": c["model"]["norm"],
               "skip": c["model"]["skip"], "optimizer": c["optim"]["name"],
               "lr": c["optim"]["lr"], "seed": c["seed"]}
        summary = s if isinstance(s, dict) else {}
        for name in ("gamma_hat", "kappa_hat"):
            for k in keys:
                row[f"{name}_{k}"] = summary.get(name, {}).get(k, math.nan)
        row.update({
            "gamma_bar": summary.get("gamma_bar", math.nan),
            "window_end": summary["window"][1] if "window" in summary else math.nan,
            "final_loss": summary.get("final_loss", math.nan),
            "steps_to_threshold": summary.get("steps_to_threshold"),
            "auc_log_loss": summary.get("auc_log_loss", math.nan),
            "diverged": summary.get("diverged", False) if summary else None,
            "run_dir": f"runs/{spec.run_id}" if summary else "",
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
    finished = set(runs.loc[runs["status"].isin(["done", "diverged"]), "run_id"])
    eps = primary_eps(study)
    out = []
    for block in study.blocks:
        for axis, (role, value) in block.compare.items():
            others = [v for v in block.grid[axis] if v != value]
            pairs_of = [(value, o) if role == "with" else (o, value) for o in others]
            contexts: dict[str, tuple[dict[str, Any], str]] = {}  # key -> (values, a run)
            index: dict[tuple[str, Any, int], str] = {}
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
                                          _architecture(first), first["data"]["name"]))
    return out


def _values(runs: pd.DataFrame, ids: list[str], column: str) -> np.ndarray:
    by_id = runs.set_index("run_id")[column]
    return np.array([float(by_id[i]) if by_id[i] is not None else math.nan for i in ids],
                    dtype=float)


def _speed(runs: pd.DataFrame, ids: list[str]) -> np.ndarray:
    # a run whose loss became non-finite has no auc: it is the slowest of all
    v = _values(runs, ids, SPEED)
    return np.where(np.isnan(v), np.inf, v)


def techniques_table(study: Study, runs: pd.DataFrame,
                     comps: list[Comparison]) -> pd.DataFrame:
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
    ok = runs[runs["status"].isin(["done", "diverged"])]
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


# ----------------------------------------------------------------------------- figures

def _band(ax, curves: list[np.ndarray], color: str, label: str, x0: int) -> None:
    n = max((len(c) for c in curves), default=0)
    if n == 0:
        return
    m = np.full((len(curves), n), np.nan)
    for i, c in enumerate(curves):
        m[i, : len(c)] = c
    m = np.where(np.isfinite(m), m, np.nan)  # a seed's -inf gamma or diverged loss: a gap
    x = np.arange(x0, x0 + n)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns of a partial study
        ax.plot(x, np.nanmean(m, axis=0), color=color, label=label)
        ax.fill_between(x, np.nanmin(m, axis=0), np.nanmax(m, axis=0), color=color, alpha=0.2,
                        lw=0)


def comparison_figure(comp: Comparison, summaries: dict, eps: str, path: Path) -> None:
    """Training loss and gamma per epoch: the mean over seeds and their spread (min-max
    band); non-finite values (a -inf gamma, a diverged loss) are left out."""
    fig = Figure(figsize=(10, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    ax_loss, ax_gamma = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for side, color, value in ((1, "tab:blue", comp.with_value),
                               (2, "tab:orange", comp.without_value)):
        ids = [p[side] for p in comp.pairs]
        text = f"{comp.axis.split('.')[-1]}={label(value)} ({len(ids)} seeds)"
        _band(ax_loss, [np.asarray(summaries[i]["full_loss"], float) for i in ids], color,
              text, 0)
        _band(ax_gamma, [np.asarray(summaries[i]["gamma_hat_per_epoch"].get(eps, []), float)
                         for i in ids], color, text, 1)
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="full training loss F_k",
                title="Training loss (mean, min-max over seeds)")
    ax_gamma.set(xlabel="epoch", ylabel=f"gamma_hat per epoch (eps={eps})",
                 title="Gamma per epoch (mean, min-max over seeds)")
    ax_gamma.set_yscale("symlog", linthresh=1e-2)
    ax_gamma.axhline(0, color="k", lw=0.5)
    ax_loss.legend(fontsize=8)
    fig.suptitle(f"{comp.technique}: {label(comp.with_value)} vs {label(comp.without_value)} "
                 f"[{comp.block}{'; ' if comp.context else ''}"
                 f"{', '.join(f'{k}={label(v)}' for k, v in comp.context.items())}]",
                 fontsize=10)
    save_png(fig, path, dpi=90)


def correlation_figure(runs: pd.DataFrame, eps: str, path: Path) -> None:
    ok = runs[runs["status"].isin(["done", "diverged"])]
    fig = Figure(figsize=(6, 4.2))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.9)
    ax = fig.add_subplot()
    metric = f"gamma_hat_{eps}"
    g_all = ok[metric].to_numpy(float)
    finite = g_all[np.isfinite(g_all)]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    # +-inf estimates (no / every gamma qualifies) get their own column at either edge
    x_ninf, x_pinf = min(lo, 0.0) * 10 - 10, max(hi, 0.0) * 10 + 10
    for arch, part in ok.groupby("architecture"):
        g = part[metric].to_numpy(float)
        x = np.where(g == -np.inf, x_ninf, np.where(g == np.inf, x_pinf, g))
        ax.scatter(x, part[SPEED].to_numpy(float), s=14, label=arch)
    ax.set_xscale("symlog", linthresh=1e-2)
    if np.isinf(g_all).any():
        ticks = [t for t in ax.get_xticks() if x_ninf < t < x_pinf]
        ax.set_xticks([x_ninf, *ticks, x_pinf],
                      ["-inf", *(f"{t:g}" for t in ticks), "+inf"])
    ax.set(xlabel=f"gamma_hat (eps={eps})", ylabel="auc_log_loss (lower is faster)",
           title="Gamma and convergence speed, all runs")
    if len(ok):
        ax.legend(fontsize=8)
    save_png(fig, path, dpi=90)


# ----------------------------------------------------------------------------- words

def _fmt(x: Any) -> str:
    if isinstance(x, float | np.floating):
        if math.isnan(x):
            return "n/a"
        if math.isinf(x):
            return "+inf" if x > 0 else "-inf"
        return f"{x:.4g}"
    return str(x)


def verdict(row: pd.Series) -> str:
    """One sentence on one comparison."""
    n = int(row["n_seeds"])
    name = row["metric"].rsplit("_", 1)[0].replace("_hat", "_hat ")
    if n == 0:
        return (f"{row['technique']} {row['with']} vs {row['without']} on "
                f"{row['architecture']} ({row['dataset']}): no finished matched runs yet.")
    g_with, g_without = row["gamma_with"], row["gamma_without"]
    diff = g_with - g_without if np.isfinite(g_with) and np.isfinite(g_without) else math.nan
    by = f" (by {_fmt(diff)})" if np.isfinite(diff) else ""
    larger = "larger" if row["gamma_larger"] else "not larger"
    faster = "faster" if row["faster"] else "not faster"
    return (f"{row['technique']} {row['with']} vs {row['without']} on {row['architecture']} "
            f"({row['dataset']}{'; ' + row['context'] if row['context'] else ''}): "
            f"{name.strip()} is {larger} with {row['with']}: median {_fmt(g_with)} vs "
            f"{_fmt(g_without)}{by}, larger in {int(row['gamma_larger_seeds'])} of {n} seeds; "
            f"convergence is {faster}: median auc_log_loss {_fmt(row['speed_with'])} vs "
            f"{_fmt(row['speed_without'])}, faster in {int(row['faster_seeds'])} of {n} seeds.")


def technique_verdicts(tech: pd.DataFrame) -> list[str]:
    """Per technique, across its comparisons: how often gamma is larger and convergence
    faster with it, and whether the two agree (the paper's claim)."""
    out = []
    for name, part in tech[tech["n_seeds"] > 0].groupby("technique", sort=False):
        n = len(part)
        g, f = int(part["gamma_larger"].sum()), int(part["faster"].sum())
        agree = int((part["gamma_larger"] == part["faster"]).sum())
        seeds_g = int(part["gamma_larger_seeds"].sum())
        seeds_f = int(part["faster_seeds"].sum())
        seeds = int(part["n_seeds"].sum())
        claim = ("supports" if g == n and f == n else
                 "partly supports" if g > 0 or f > 0 else "does not support")
        out.append(f"{name}: in {g} of {n} comparisons the technique's median "
                   f"{'kappa' if part['metric'].str.startswith('kappa').all() else 'gamma'}"
                   f" is larger ({seeds_g} of {seeds} matched seeds), and in {f} of {n} it "
                   f"converges faster ({seeds_f} of {seeds} seeds); the two agree in {agree} "
                   f"of {n}. This {claim} the paper's claim that the technique raises gamma "
                   f"and speeds up convergence.")
    return out


# ----------------------------------------------------------------------------- html

def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, links: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            text = html.escape(_fmt(v) if v is not None else "")
            if c in links and isinstance(v, str) and v:
                text = " ".join(f'<a href="runs/{html.escape(r)}/summary.json">{html.escape(r)}'
                                f"</a>" for r in v.split())
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


DEFINITIONS = """
<ul>
<li><b>Regularity principle</b> RP(&gamma;; &delta;) at step t:
 a_t &ge; &gamma; b_t + &delta;<sub>t</sub> s_t, with v_t = (x_t &minus; x_{t+1}) / &eta;_t,
 a_t = &lang;x_t &minus; x*, v_t&rang;, s_t = ||v_t||&sup2;, b_t = l_t(x_t) &minus; l_t(x*)
 (step t's own minibatch, mode and random state), and &delta;_t = &eta;_t / 2 unless the run's
 analysis sets it. With that default, RP(&gamma;) is D_t &minus; D_{t+1} &ge;
 2 &eta;_t &gamma; b_t, D_t = ||x_t &minus; x*||&sup2;.</li>
<li><b>gamma_hat(&epsilon;)</b>: the largest &gamma; for which at most floor(&epsilon; n) of
 the n steps in the window violate RP (exact breakpoint sweep; +inf when every &gamma;
 qualifies, &minus;inf when none does). <b>kappa_hat</b> = the same with the learning-rate-free
 &kappa; = &eta; &gamma;, used when comparing optimizers or learning rates, whose steps have
 different sizes.</li>
<li><b>Window</b>: the converging phase of PRINCIPLE.md; x* is the run's final iterate.</li>
<li><b>Convergence speed</b>: auc_log_loss = (1/E) &sum; (log F_k + log F_{k+1}) / 2 over the
 E epochs, the mean log full training loss (lower is faster); a run whose loss became
 non-finite counts as slowest.</li>
<li><b>Comparisons</b> match runs that differ only in the technique (same other settings,
 same seed). Each side is summarised by its median over seeds; "larger in k of n seeds"
 counts matched pairs.</li>
<li><b>Rank correlation</b>: Spearman's &rho; between gamma_hat and &minus;auc_log_loss over
 runs (positive: larger gamma goes with faster convergence), with a 95% percentile
 bootstrap interval over runs (2000 resamples, seed 0). Across architectures and data sets
 this mixes very different runs; the per-block rows are the like-for-like ones.</li>
<li><b>Caution</b>: over a window, the aggregate gamma_bar and the average loss gap are tied
 by the identity D_t &minus; D_{t+1} = 2 &eta;_t a_t &minus; &eta;_t&sup2; s_t, so a correlation
 between gamma_bar and speed is partly built in. The principle's claim is that it holds
 step by step (gamma_hat): the report presents gamma_hat as the evidence and gamma_bar
 (in runs.csv) as the description.</li>
</ul>
"""

CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;
padding:2px 6px;text-align:left}th{background:#f0f0f0}img{max-width:100%}
.verdict{margin:.4em 0}"""


def write_report(study_dir: str | Path, study: Study) -> dict[str, Path]:
    """Write runs.csv, techniques.csv, figures/*.png and report.html into ``study_dir``."""
    from trajreg import __version__

    study_dir = Path(study_dir)
    eps = primary_eps(study)
    summaries = load_summaries(study_dir, study)
    runs = runs_table(study, summaries)
    comps = comparisons(study, runs)
    tech = techniques_table(study, runs, comps)
    corr = correlations(study, runs)
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = []
    for comp in comps:
        if comp.pairs:
            path = fig_dir / f"{comp.slug}.png"
            comparison_figure(comp, summaries, eps, path)
            figures.append((comp, path))
    corr_png = fig_dir / "gamma_vs_speed.png"
    correlation_figure(runs, eps, corr_png)

    paths = {"runs": study_dir / "runs.csv", "techniques": study_dir / "techniques.csv",
             "report": study_dir / "report.html"}
    _write_csv(runs, paths["runs"])
    _write_csv(tech, paths["techniques"])

    counts = runs["status"].value_counts().to_dict()
    parts = [f"<html><head><meta charset='utf-8'><title>trajreg study {html.escape(study.name)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>trajreg study: {html.escape(study.name)}</h1>",
             f"<p>{len(runs)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items())
             + f". Written {datetime.datetime.now():%Y-%m-%d %H:%M} by trajreg {__version__}. "
             f"Primary estimate: eps = {eps}.</p>",
             "<h2>Verdicts by technique</h2>"]
    parts += [f"<p class='verdict'>{html.escape(v)}</p>" for v in technique_verdicts(tech)]
    parts.append("<h2>Comparisons</h2>")
    parts += [f"<p class='verdict'>{html.escape(verdict(r))}</p>" for _, r in tech.iterrows()]
    parts.append(_table(tech, links=("runs_with", "runs_without")))
    parts.append("<h2>Data and networks of each block</h2><ul>")
    for block in study.blocks:
        b = block.base
        parts.append(f"<li><b>{html.escape(block.name)}</b>: "
                     f"{html.escape(str(b.get('model', {})))} on "
                     f"{html.escape(str(b.get('data', {})))}; grid "
                     f"{html.escape(str(block.grid))}; seeds {block.seeds}. "
                     f"{html.escape(block.note)}</li>")
    parts.append("</ul><h2>Figures</h2>")
    for comp, path in figures:
        ids = ", ".join(f"{p[1]}/{p[2]}" for p in comp.pairs)
        parts.append(f"<h3>{html.escape(comp.technique)}: {html.escape(label(comp.with_value))}"
                     f" vs {html.escape(label(comp.without_value))} ({html.escape(comp.block)})"
                     f"</h3>{_img(path)}<p>Runs (with/without): {html.escape(ids)}</p>")
    parts.append("<h2>Gamma and convergence speed</h2>")
    corr_df = pd.DataFrame([{"scope": s, "metric": m, "spearman_rho": c.rho,
                             "ci_low": c.low, "ci_high": c.high, "n_runs": c.n}
                            for s, m, c in corr])
    parts.append(_table(corr_df))
    parts.append(_img(corr_png))
    parts.append("<h2>Definitions</h2>" + DEFINITIONS)
    parts.append("<h2>Runs</h2>")
    parts.append(_table(runs.drop(columns=["reason"]), links=("run_id",)))
    failed = runs[runs["status"] == "failed"]
    if len(failed):
        parts.append("<h2>Failed runs</h2>")
        parts.append(_table(failed[["run_id", "block", "reason"]]))
    parts.append("</body></html>")
    replace_atomic(paths["report"], lambda tmp: tmp.write_text("\n".join(parts)))
    return paths


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    replace_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


