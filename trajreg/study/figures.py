"""The report's figures (PNG): per comparison, training loss and gamma per epoch; over
all runs, gamma against convergence speed. Figure objects, not pyplot (no global
state); each function draws, writes ``path`` atomically and returns the Figure."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trajreg.run.figures import save_png
from trajreg.run.summary import Summary
from trajreg.study.spec import label
from trajreg.study.tables import FINISHED, SPEED, Comparison


def _band(ax, curves: list[np.ndarray], color: str, text: str, x0: int) -> None:
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
        ax.plot(x, np.nanmean(m, axis=0), color=color, label=text)
        ax.fill_between(x, np.nanmin(m, axis=0), np.nanmax(m, axis=0), color=color, alpha=0.2,
                        lw=0)


def comparison_figure(comp: Comparison, summaries: dict[str, Summary], eps: str,
                      path: Path) -> Figure:
    """Training loss and gamma per epoch: the mean over seeds and their spread (min-max
    band); non-finite values (a -inf gamma, a diverged loss) are left out."""
    fig = Figure(figsize=(10, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    ax_loss, ax_gamma = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for side, color, value in ((1, "tab:blue", comp.with_value),
                               (2, "tab:orange", comp.without_value)):
        ids = [p[side] for p in comp.pairs]
        text = f"{comp.axis.split('.')[-1]}={label(value)} ({len(ids)} seeds)"
        _band(ax_loss, [np.asarray(summaries[i].full_loss, float) for i in ids], color,
              text, 0)
        _band(ax_gamma, [np.asarray((summaries[i].gamma_hat_per_epoch or {}).get(eps, []),
                                    float) for i in ids], color, text, 1)
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
    return fig


def correlation_figure(runs: pd.DataFrame, eps: str, path: Path) -> Figure:
    """gamma_hat against auc_log_loss over every finished run, by architecture."""
    ok = runs[runs["status"].isin(FINISHED)]
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
    return fig
