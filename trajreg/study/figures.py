"""The report's figures (PNG). Figure objects, not pyplot (no global state); each
function draws, writes ``path`` atomically and returns the Figure (tests read it).

Readability rules every figure follows:

- log axes get labelled ticks whatever their span (1-2-5 within two decades, every
  decade up to about eight, every k-th decade beyond);
- gamma axes are linear, so values 0.6-0.9 stay apart; when a few values lie far
  from the rest, the axis shows the bulk and those values sit at its edge as
  triangles (their values are in runs.csv);
- +-inf estimates are never dropped: in scatter plots they get their own labelled
  columns, in per-epoch panels triangle markers at the panel's edge;
- epoch axes have integer ticks; a diverged run is drawn up to its divergence and
  marked with a cross.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from trajreg.atomic import replace_atomic
from trajreg.run.summary import Summary
from trajreg.study.spec import label
from trajreg.study.tables import (
    CLAIM_AXES,
    FASTER,
    FINISHED,
    LARGER,
    NOT_COMPARABLE,
    SLOWER,
    SMALLER,
    SPEED,
    Comparison,
)

WITH, WITHOUT = "tab:blue", "tab:orange"
OUTCOME_COLORS = {LARGER: "tab:green", FASTER: "tab:green", SMALLER: "tab:red",
                  SLOWER: "tab:red"}
UNDECIDED = "0.55"
FOREST_LIMIT = 1.0  # relative differences beyond +-100% sit at the panel's edge


def log_ticks(low: float, high: float, most: int = 8) -> list[float]:
    """Tick values for a log axis on [low, high]: at most about ``most`` of them.

    >>> log_ticks(0.01, 0.5)
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    >>> log_ticks(1e-9, 10.0)
    [1e-09, 1e-07, 1e-05, 0.001, 0.1, 10.0]
    """
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    if hi - lo <= 2:
        ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 2, 5)]
    else:
        step = max(1, math.ceil((hi - lo + 1) / most))
        ticks = [10.0 ** e for e in range(lo, hi + 1) if (e - lo) % step == 0]
    eps = 1e-9
    return [float(f"{t:.3g}") for t in ticks if low * (1 - eps) <= t <= high * (1 + eps)]


def _label_log_axes(fig: Figure) -> None:
    for ax in fig.axes:
        for axis, lim, scale in ((ax.xaxis, ax.get_xlim(), ax.get_xscale()),
                                 (ax.yaxis, ax.get_ylim(), ax.get_yscale())):
            if scale != "log":
                continue
            low, high = sorted(lim)
            ticks = log_ticks(low, high) if low > 0 else []
            if len(ticks) < 2:  # less than a factor 2: plain linear-style ticks
                ticks = [float(f"{t:.3g}") for t in np.geomspace(low, high, 3)]
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_locator(NullLocator())


def save_figure(fig: Figure, path: Path, dpi: int = 90) -> None:
    """Label the log axes and write the PNG atomically."""
    _label_log_axes(fig)
    replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def bulk_limits(values: Sequence[float] | np.ndarray) -> tuple[float, float] | None:
    """Axis limits holding the finite values, or only their bulk when a few lie far
    out (beyond 3 interquartile ranges from the quartiles); None if none is finite.

    >>> bulk_limits([0.6, 0.7, 0.8, 0.9])
    (0.585, 0.915)
    >>> lo, hi = bulk_limits([0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.65, 0.7, 0.8, -500.0])
    >>> lo > -2 and hi < 2
    True
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    lo, hi = float(v.min()), float(v.max())
    if len(v) >= 5:
        q25, q75 = (float(q) for q in np.quantile(v, [0.25, 0.75]))
        spread = max(q75 - q25, 1e-3 * max(abs(q25), abs(q75)), 1e-12)
        lo, hi = max(lo, q25 - 3 * spread), min(hi, q75 + 3 * spread)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 0.1)
    return round(lo - pad, 12), round(hi + pad, 12)


def _edge_markers(ax: Axes, x: np.ndarray, y: np.ndarray, color: str, axis: str,
                  text: str | None) -> None:
    """Mark values outside the axis limits (inf included) at the axis edge."""
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    v = y if axis == "y" else x
    for side, mask, marker in (("low", v < lo, "v" if axis == "y" else "<"),
                               ("high", v > hi, "^" if axis == "y" else ">")):
        if not mask.any():
            continue
        frac = 0.03 if side == "low" else 0.97
        if axis == "y":
            ax.plot(x[mask], np.full(mask.sum(), frac), marker, color=color, ms=7,
                    transform=ax.get_xaxis_transform(), clip_on=False, ls="none",
                    label=None if text is None else f"{text} ({side}er than the axis)")
        else:
            ax.plot(np.full(mask.sum(), frac), y[mask], marker, color=color, ms=7,
                    transform=ax.get_yaxis_transform(), clip_on=False, ls="none",
                    label=None if text is None else f"{text} ({side}er than the axis)")


def _matrix(curves: list[np.ndarray]) -> np.ndarray:
    n = max((len(c) for c in curves), default=0)
    m = np.full((len(curves), n), np.nan)
    for i, c in enumerate(curves):
        m[i, : len(c)] = c
    return m


def _band(ax: Axes, m: np.ndarray, color: str, text: str, x0: int) -> None:
    """Mean and min-max band over seeds of the finite values of each column."""
    if m.size == 0:
        return
    f = np.where(np.isfinite(m), m, np.nan)
    x = np.arange(x0, x0 + m.shape[1])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns
        ax.plot(x, np.nanmean(f, axis=0), color=color, label=text)
        ax.fill_between(x, np.nanmin(f, axis=0), np.nanmax(f, axis=0), color=color,
                        alpha=0.2, lw=0)


def comparison_figure(comp: Comparison, summaries: dict[str, Summary], eps: str,
                      path: Path) -> Figure:
    """Training loss and gamma_hat per epoch of the two sides of a comparison: the mean
    over seeds and their min-max band; diverged seeds drawn up to their divergence and
    crossed; -inf (+inf) epochs as triangles at the bottom (top) of the gamma panel."""
    fig = Figure(figsize=(10, 3.8))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.84, wspace=0.27)
    ax_loss, ax_gamma = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sides = []
    all_gamma = []
    for side, color, value in ((1, WITH, comp.with_value), (2, WITHOUT, comp.without_value)):
        ids = [cast(str, p[side]) for p in comp.pairs]
        seeds = [p[0] for p in comp.pairs]
        name = f"{comp.axis.split('.')[-1]}={label(value)}"
        losses = _matrix([np.asarray(summaries[i].full_loss, float) for i in ids])
        gammas = _matrix([np.asarray((summaries[i].gamma_hat_per_epoch or {}).get(eps, []),
                                     float) for i in ids])
        sides.append((color, name, ids, seeds, losses, gammas))
        all_gamma.append(gammas.ravel())
        _band(ax_loss, losses, color, f"{name} ({len(ids)} seeds)", 0)
        for i, seed in zip(ids, seeds, strict=True):
            s = summaries[i]
            if not s.diverged:
                continue
            full = np.asarray(s.full_loss, float)
            ok = np.flatnonzero(np.isfinite(full))
            last = int(ok[-1]) if len(ok) else 0
            ax_loss.plot(np.arange(last + 1), full[: last + 1], ls="--", lw=1, color=color)
            ax_loss.plot([last], [full[last] if len(ok) else 1.0], "x", color=color, ms=10,
                         mew=2, label=f"{name} seed {seed}: diverged after epoch {last}")
    gamma_values = np.concatenate(all_gamma) if all_gamma else np.array([])
    for color, name, _, _, _, gammas in sides:
        _band(ax_gamma, gammas, color, name, 1)
    limits = bulk_limits(gamma_values)
    if limits is not None:
        ax_gamma.set_ylim(*limits)
    for k, (color, name, _, _, _, gammas) in enumerate(sides):
        rows, cols = np.nonzero(~np.isnan(gammas))
        x, y = cols + 1.0 + (0.06 if k else -0.06), gammas[rows, cols]  # sides apart
        n_out = int(np.sum((y < ax_gamma.get_ylim()[0]) | (y > ax_gamma.get_ylim()[1])))
        if n_out:
            ninf = int(np.sum(y == -np.inf))
            text = f"{name}: {n_out} seed-epochs off the axis" + (
                f", {ninf} at -inf" if ninf else "")
            _edge_markers(ax_gamma, x, y, color, "y", None)
            ax_gamma.plot([], [], "v", color=color, label=text)
    # checkpoint series: F at each checkpoint, and one gamma_hat a run (no epochs)
    series = all(summaries[i].checkpoints is not None for side in sides for i in side[2])
    unit = "checkpoint" if series else "epoch"
    ax_loss.set(yscale="log", xlabel=unit,
                ylabel="F at checkpoint k" if series else "full training loss F_k",
                title="Training loss (mean, min-max over seeds)")
    ax_gamma.set(xlabel=unit, ylabel=f"gamma_hat per epoch (eps={eps})",
                 title="Gamma per epoch (mean, min-max over seeds)")
    ax_gamma.axhline(0, color="k", lw=0.5)
    if series:
        ax_gamma.text(0.5, 0.5, "checkpoint series: one gamma_hat over the window\n"
                      "(runs.csv), none per interval", ha="center", va="center",
                      transform=ax_gamma.transAxes, fontsize=9)
    for ax in (ax_loss, ax_gamma):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{comp.technique}: {label(comp.with_value)} vs {label(comp.without_value)} "
                 f"[{comp.block}{'; ' if comp.context else ''}"
                 f"{', '.join(f'{k}={label(v)}' for k, v in comp.context.items())}]",
                 fontsize=10)
    save_figure(fig, path)
    return fig


def correlation_figure(runs: pd.DataFrame, eps: str, path: Path) -> Figure:
    """gamma_hat against auc_log_loss over every finished run, by architecture; runs
    with gamma_hat = -inf (+inf) in their own labelled column left (right) of the axis."""
    ok = runs[runs["status"].isin(FINISHED)]
    metric = f"gamma_hat_{eps}"
    g_all = ok[metric].to_numpy(float) if len(ok) else np.array([])
    has = {"-inf": bool(np.any(g_all == -np.inf)), "+inf": bool(np.any(g_all == np.inf))}
    widths = [1] * has["-inf"] + [8] + [1] * has["+inf"]
    fig = Figure(figsize=(7, 4.4))
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, wspace=0.05, left=0.11,
                            right=0.97, bottom=0.13, top=0.88)
    axes = [fig.add_subplot(grid[0, i]) for i in range(len(widths))]
    ax: Axes | None
    for ax in axes[1:]:
        ax.sharey(axes[0])
    main = axes[1] if has["-inf"] else axes[0]
    columns = {"-inf": axes[0] if has["-inf"] else None,
               "+inf": axes[-1] if has["+inf"] else None}
    limits = bulk_limits(g_all)
    colors: dict[Any, str] = {}
    for i, (arch, part) in enumerate(ok.groupby("architecture", sort=True)):
        color = colors.setdefault(arch, f"C{i % 10}")
        g = part[metric].to_numpy(float)
        speed = part[SPEED].to_numpy(float)
        good = part["trained"].map(lambda v: v is True or str(v) == "True").to_numpy(bool)
        finite = np.isfinite(g)
        main.scatter(g[finite & good], speed[finite & good], s=14, color=color, label=arch)
        main.scatter(g[finite & ~good], speed[finite & ~good], s=14, facecolors="none",
                     edgecolors=color)
        for key, value in (("-inf", -np.inf), ("+inf", np.inf)):
            sel = g == value
            if sel.any():
                jitter = np.linspace(-0.25, 0.25, int(sel.sum())) if sel.sum() > 1 else [0.0]
                cast(Axes, columns[key]).scatter(np.asarray(jitter), speed[sel], s=14,
                                     facecolors=np.where(good[sel], color, "none").tolist(),
                                     edgecolors=color)
    if len(ok) and not ok["trained"].map(lambda v: v is True or str(v) == "True").all():
        main.scatter([], [], s=14, facecolors="none", edgecolors="0.3",
                     label="did not train (no speed if diverged)")
    if limits is not None:
        main.set_xlim(*limits)
        finite = np.isfinite(g_all)
        _edge_markers(main, g_all[finite], ok[SPEED].to_numpy(float)[finite], "0.3", "x",
                      "gamma_hat")
    main.xaxis.set_major_locator(MaxNLocator(nbins=7))
    for key, ax in columns.items():
        if ax is None:
            continue
        ax.set_xlim(-0.5, 0.5)
        ax.set_xticks([0.0], [key])
        ax.set_title("no gamma\nqualifies" if key == "-inf" else "every gamma\nqualifies",
                     fontsize=7)
        ax.tick_params(axis="y", labelleft=ax is axes[0])
    main.tick_params(axis="y", labelleft=main is axes[0])
    axes[0].set_ylabel("auc_log_loss (lower is faster)")
    main.set_xlabel(f"gamma_hat (eps={eps})")
    fig.suptitle("Gamma and convergence speed, all finished runs", fontsize=10)
    if len(ok):
        main.legend(fontsize=7)
    save_figure(fig, path)
    return fig


def _forest_order(tech: pd.DataFrame) -> pd.DataFrame:
    order = {name: i for i, name in enumerate(dict.fromkeys(CLAIM_AXES.values()))}
    key = tech.apply(lambda r: (0 if r["role"] == "claim" else 1,
                                order.get(r["technique"], len(order)), r["technique"]), axis=1)
    return tech.assign(_key=key).sort_values("_key", kind="stable").drop(columns="_key")


def _relative(diff: float, low: float, high: float, a: float, b: float) -> tuple[float, ...]:
    scale = max((abs(v) for v in (a, b) if math.isfinite(v)), default=math.nan)
    if not scale > 0:
        return math.nan, math.nan, math.nan
    return diff / scale, low / scale, high / scale


def forest_figure(tech: pd.DataFrame, min_effect: float, path: Path) -> Figure:
    """One row per comparison, grouped by technique (the paper's first, then other
    settings): the median paired difference of the metric and of speed (auc_log_loss)
    with its 95% bootstrap interval, relative to the larger side's median magnitude
    (the scale of the minimum effect, shaded), coloured by outcome."""
    rows = _forest_order(tech).reset_index(drop=True)
    n = len(rows)
    height = 1.75 + 0.3 * max(n, 1)  # inches: 0.45 title, 1.0 labels and legend, rows
    fig = Figure(figsize=(11, height))
    fig.subplots_adjust(left=0.36, right=0.98, bottom=1.1 / height, top=1 - 0.4 / height,
                        wspace=0.08)
    ax_g, ax_s = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_s.sharey(ax_g)
    panels = ((ax_g, "diff_median", "diff_low", "diff_high", "gamma_with", "gamma_without",
               "outcome_gamma", "gamma_hat / kappa_hat: with - without\n(relative; "
               "right: larger with the technique)"),
              (ax_s, "speed_diff_median", "speed_diff_low", "speed_diff_high", "speed_with",
               "speed_without", "outcome_speed", "auc_log_loss: with - without\n(relative; "
               "left: faster with the technique)"))
    y = np.arange(n)[::-1].astype(float)
    for ax, med, lo, hi, a, b, outcome, xlabel in panels:
        ax.axvspan(-min_effect, min_effect, color="0.92", lw=0, zorder=0)
        ax.axvline(0, color="k", lw=0.6, zorder=1)
        for yi, (_, r) in zip(y, rows.iterrows(), strict=True):
            word = r[outcome]
            if word == NOT_COMPARABLE:
                ax.text(0, yi, "not comparable", ha="center", va="center", fontsize=7,
                        color=UNDECIDED, style="italic")
                continue
            x, xl, xh = _relative(r[med], r[lo], r[hi], r[a], r[b])
            color = OUTCOME_COLORS.get(word, UNDECIDED)
            if math.isnan(x):
                continue
            lim = FOREST_LIMIT
            xl = -lim if math.isnan(xl) else xl
            xh = lim if math.isnan(xh) else xh
            ax.plot([max(xl, -lim), min(xh, lim)], [yi, yi], color=color, lw=2, zorder=2)
            marker = "o" if -lim <= x <= lim else (">" if x > lim else "<")
            ax.plot([min(max(x, -lim), lim)], [yi], marker, color=color, ms=6, zorder=3)
        ax.set_xlim(-1.1 * FOREST_LIMIT, 1.1 * FOREST_LIMIT)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+.0%}"))
        ax.tick_params(labelsize=7)
        previous = None
        for yi, (_, r) in zip(y, rows.iterrows(), strict=True):
            if previous is not None and r["technique"] != previous:
                ax.axhline(yi + 0.5, color="0.6", lw=0.6)
            previous = r["technique"]
    labels = [f"{r['technique']}: {r['with']} vs {r['without']} - {r['architecture']}"
              + (f" ({r['context']})" if r["context"] else "")
              + ("" if r["role"] == "claim" else " [stratum]") for _, r in rows.iterrows()]
    ax_g.set_yticks(y, labels, fontsize=7)
    ax_s.tick_params(axis="y", labelleft=False)
    ax_g.set_ylim(-0.7, n - 0.3)
    for word, color in (("larger / faster", "tab:green"), ("smaller / slower", "tab:red"),
                        ("inconclusive", UNDECIDED)):
        ax_s.plot([], [], "o-", color=color, label=word)
    ax_s.fill_between([], [], color="0.92", label=f"minimum effect (+-{min_effect:.0%})")
    fig.legend(*ax_s.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=4,
               bbox_to_anchor=(0.67, 0.0), frameon=False)
    fig.suptitle("Paired differences by comparison (median over seeds, 95% bootstrap "
                 "interval)", fontsize=10)
    save_figure(fig, path)
    return fig
