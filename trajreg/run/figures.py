"""The run's PNG figures, drawn from its metrics table and summary.

Every figure is drawn for any run trajreg writes: a diverged run (empty window,
gamma nan), infinite gamma in some epochs (marked at the axis edge, named in the
legend), an empty metrics table, or a summary without an analysis (record mode
off: only the loss figure). ``geometry.png`` (rsi_t and eb_t over steps) and ``mli.png``
(the loss from x_0 to x*) are drawn only when the run has them (``GEOMETRY_FIGURES``).
Values beyond +-``PLOT_LIMIT`` (a huge ``--delta``, a run near float overflow) are drawn
as infinities are (a gap, a mark at the edge, a note), since matplotlib cannot place
ticks on an axis spanning them; numpy's floating-point warnings are silenced while
drawing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from trajreg.atomic import replace_atomic

FIGURES = ("loss.png", "gamma_per_epoch.png", "r_distribution.png", "distance.png")
GEOMETRY_FIGURES = ("geometry.png", "mli.png")  # with recorded gradients; with an mli
CURVATURE_FIGURE = "sharpness.png"  # with record.curvature
MAX_LOG_TICKS = 8  # labelled ticks on a log axis spanning many decades
# the largest magnitude drawn as a number: an axis from -1e307 to 1e307 overflows
# matplotlib's tick arithmetic (its steps times ten); beyond it, a value is drawn as inf
PLOT_LIMIT = 1e300


def new_axes() -> tuple[Figure, Axes]:
    # Figure objects, not pyplot: no global state, safe in worker threads. A fixed
    # layout and plain-text labels: tight/constrained layout and mathtext parsing
    # cost more than drawing (about 0.15 s a figure), paid by every run of a study
    fig = Figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    return fig, fig.add_subplot()


def _thin(n: int, most: int = 4000) -> slice:
    return slice(None, None, max(1, -(-n // most)))


def log_label(value: float, _pos: object = None) -> str:
    """A log-axis tick label in plain text (no mathtext: it is slow to draw): powers of
    ten far from 1 as ``1e-12``, ``1e30``; other values as ``%g`` (0.05, 200)."""
    if not (value > 0 and math.isfinite(value)):
        return ""
    exponent = round(math.log10(value))
    if abs(math.log10(value) - exponent) < 1e-9 and abs(exponent) > 3:
        return f"1e{exponent}"
    return f"{value:g}"


def set_log_ticks(axis: Axis, low: float, high: float) -> None:
    """Labelled major ticks on a log axis showing [low, high]: 1-2-5 within two decades,
    all of 1..9 within one, else at most ``MAX_LOG_TICKS`` powers of ten (every
    decade, every other decade, ... as the span needs)."""
    if not (0 < low < high and math.isfinite(high)):
        return  # nothing positive to show: the default ticks
    decades = math.log10(high / low)
    if decades > 2:
        locator = LogLocator(base=10, subs=(1.0,), numticks=MAX_LOG_TICKS)
    elif decades > 1:
        locator = LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=3 * MAX_LOG_TICKS)
    else:
        locator = LogLocator(base=10, subs=tuple(float(k) for k in range(1, 10)),
                             numticks=9 * MAX_LOG_TICKS)
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(log_label))


def save_png(fig: Figure, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` atomically, with cheap plain-text log-axis ticks."""
    for ax in fig.axes:
        # log axes' minor ticks and mathtext tick labels were most of the drawing time
        ax.minorticks_off()
        for axis, scale, limits in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                    (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            if scale == "log":
                set_log_ticks(axis, min(limits), max(limits))
    replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def _floats(values: Iterable[Any]) -> np.ndarray:
    """A JSON series as floats (null, i.e. nan in the file, becomes nan), values beyond
    +-PLOT_LIMIT as +-inf."""
    return _huge_as_inf(np.asarray([math.nan if v is None else v for v in values],
                                   dtype=float))


def _huge_as_inf(y: np.ndarray) -> np.ndarray:
    """``y`` (floats) with values beyond +-PLOT_LIMIT as +-inf, nan kept."""
    y = np.asarray(y, dtype=float)
    with np.errstate(invalid="ignore"):
        huge = np.isfinite(y) & (np.abs(y) > PLOT_LIMIT)
    return np.where(huge, np.copysign(np.inf, y), y) if huge.any() else y


def _drawable(y: np.ndarray) -> np.ndarray:
    """``y`` with non-finite values and values beyond +-PLOT_LIMIT as nan (gaps)."""
    y = _huge_as_inf(y)
    return np.where(np.isfinite(y), y, np.nan)


def mark_infinities(ax: Axes, x: np.ndarray, y: np.ndarray, color: Any, what: str) -> None:
    """Mark x where y is +inf (a triangle at the top edge) or -inf (at the bottom edge),
    with a legend entry, so an infinite value cannot vanish from a plot."""
    for sign, edge, marker, word in ((1, 0.97, "^", "top"), (-1, 0.03, "v", "bottom")):
        at = x[np.isinf(y) & (np.sign(y) == sign)]
        if len(at):
            ax.plot(at, np.full(len(at), edge), marker, color=color, ms=7, ls="none",
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label=f"{what} = {'+' if sign > 0 else '-'}inf (at the {word} edge)")


def _loss(path: Path, table: pd.DataFrame, summary: dict, window: tuple[int, int] | None
          ) -> None:
    fig, ax = new_axes()
    every = _thin(len(table))
    ax.plot(table["step"].to_numpy()[every], _drawable(table["loss"].to_numpy()[every]),
            lw=0.6, alpha=0.5, label="minibatch loss l_t(x_t)")
    full = _floats(summary.get("full_loss", []))
    ends = np.asarray([0, *summary.get("epoch_ends", [])][: len(full)], dtype=float)
    ax.plot(ends, _drawable(full[: len(ends)]), "o-", ms=3, label="full training loss F_k")
    if window is not None and window[1] > window[0]:
        ax.axvspan(*window, color="tab:green", alpha=0.08, label="window")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Training loss")
    ax.legend()
    save_png(fig, path)


def _gamma_per_epoch(path: Path, summary: dict) -> None:
    fig, ax = new_axes()
    series = [(f"gamma_hat, eps={key}", _floats(values), "o-")
              for key, values in (summary.get("gamma_hat_per_epoch") or {}).items()]
    series.append(("gamma_bar", _floats(summary.get("gamma_bar_per_epoch") or []), "s--"))
    for label, y, style in series:
        x = np.arange(1, len(y) + 1, dtype=float)
        finite = np.where(np.isfinite(y), y, np.nan)  # inf: a gap here, a mark at the edge
        (line,) = ax.plot(x, finite, style, ms=3, label=label)
        mark_infinities(ax, x, y, line.get_color(), label.split(",")[0])
    ax.axhline(0, color="k", lw=0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="gamma", title="Gamma per epoch")
    ax.legend()
    save_png(fig, path)


def _sharpness(path: Path, table: pd.DataFrame, summary: dict) -> None:
    """record.curvature: lambda_max (Adam: the preconditioned one), the curvature along
    the update and the critical sharpness at the sampled steps against the edge of
    stability; beside it gamma_hat per epoch, to read the two together."""
    fig = Figure(figsize=(11, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.25)
    ax, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rows = table[np.isfinite(table["lambda_max"].to_numpy(dtype=np.float64))]
    steps = rows["step"].to_numpy(dtype=np.float64)
    adam = bool(np.isfinite(rows["lambda_max_precond"].to_numpy(dtype=np.float64)).any())
    drawn = []
    for column, label, style in (
            ("lambda_max", "lambda_max", "o-"),
            ("lambda_max_precond", "lambda_max of P^-1 H (Adam)", "s-"),
            ("curv_update", "curvature along the update", "^:"),
            ("critical_sharpness", "critical sharpness", "v:")):
        y = rows[column].to_numpy(dtype=np.float64)
        if np.isfinite(y).any():
            ax.plot(steps, np.where(np.isfinite(y) & (y > 0), y, np.nan), style, ms=3,
                    label=label)
            drawn.append(y[np.isfinite(y) & (y > 0)])
    threshold = rows["eos_threshold"].to_numpy(dtype=np.float64)
    name = "(2 + 2 beta1) / ((1 - beta1) eta)" if adam else "(2 + 2 momentum) / eta"
    ax.plot(steps, threshold, "k--", lw=1, label=f"edge of stability {name}")
    values = np.concatenate([*drawn, threshold[np.isfinite(threshold)]])
    if values.size and np.all(values > 0):
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="curvature", title="Sharpness at the sampled steps")
    ax.legend(fontsize=7)
    for key, ys in (summary.get("gamma_hat_per_epoch") or {}).items():
        y = _floats(ys)
        x = np.arange(1, len(y) + 1, dtype=float)
        (line,) = right.plot(x, np.where(np.isfinite(y), y, np.nan), "o-", ms=3,
                             label=f"gamma_hat, eps={key}")
        mark_infinities(right, x, y, line.get_color(), "gamma_hat")
    right.axhline(0, color="k", lw=0.5)
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(xlabel="epoch", ylabel="gamma", title="Gamma per epoch")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    save_png(fig, path)


def _r_distribution(path: Path, table: pd.DataFrame, summary: dict,
                    window: tuple[int, int]) -> None:
    fig, ax = new_axes()
    start, end = window
    r = table["r"].to_numpy()[start:end] if "r" in table else np.zeros(0)
    r = r[np.isfinite(r)]
    notes = []
    huge = np.abs(r) > PLOT_LIMIT
    if huge.any():
        notes.append(f"{int(huge.sum())} r_t beyond +-{PLOT_LIMIT:g} not drawn")
        r = r[~huge]
    if len(r):
        lo, hi = np.quantile(r, [0.01, 0.99])
        ax.hist(np.clip(r, lo, hi), bins=60, color="tab:blue")
    else:
        ax.text(0.5, 0.5, f"no finite r_t in the window [{start}, {end})",
                transform=ax.transAxes, ha="center", va="center")
    for key, g in (summary.get("gamma_hat") or {}).items():
        g = math.nan if g is None else float(g)
        if math.isfinite(g) and abs(g) <= PLOT_LIMIT:
            ax.axvline(g, ls="--", color="tab:red", lw=1)
            ax.annotate(f"eps={key}", (g, ax.get_ylim()[1] * 0.9), color="tab:red")
        else:  # inf, nan or huge: said in words, there is no place for a line
            notes.append(f"gamma_hat(eps={key}) = {g:.3g}")
    if notes:
        ax.text(0.02, 0.97, "\n".join(notes), transform=ax.transAxes, va="top",
                color="tab:red")
    ax.set(xlabel="r_t (clipped to 1-99%)", ylabel="steps",
           title="Distribution of r_t over the window")
    save_png(fig, path)


def _distance(path: Path, table: pd.DataFrame, window: tuple[int, int]) -> None:
    fig, ax = new_axes()
    every = _thin(len(table))
    if "D" in table:
        ax.plot(table["step"].to_numpy()[every], _drawable(table["D"].to_numpy()[every]),
                lw=0.8)
    if window[1] > window[0]:
        ax.axvspan(*window, color="tab:green", alpha=0.08)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel="D_t = |x_t - x*|^2", yscale="log",
           title="Squared distance to the reference")
    save_png(fig, path)


def _geometry(path: Path, table: pd.DataFrame, summary: dict,
              window: tuple[int, int]) -> None:
    """rsi_t = <g_t, x_t - x*> / D_t (linear) and eb_t = ||g_t|| / ||x_t - x*|| (log) over
    steps, with mu_hat and L_hat of the first eps as dashed lines."""
    fig = Figure(figsize=(6, 5.5))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.09, top=0.94, hspace=0.3)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    every = _thin(len(table))
    steps = table["step"].to_numpy()[every]
    for ax, column, name, table_key in ((top, "rsi", "mu_hat", "mu_hat"),
                                        (bottom, "eb", "L_hat", "L_hat")):
        y = _drawable(table[column].to_numpy()[every])
        ax.plot(steps, y, lw=0.6, color="tab:blue" if column == "rsi" else "tab:purple")
        for key, value in (summary.get(table_key) or {}).items():
            value = math.nan if value is None else float(value)
            if math.isfinite(value) and abs(value) <= PLOT_LIMIT \
                    and (column == "rsi" or value > 0):
                ax.axhline(value, ls="--", lw=1, color="tab:red",
                           label=f"{name}, eps={key}: {value:.3g}")
            break  # the first eps only
        if window[1] > window[0]:
            ax.axvspan(*window, color="tab:green", alpha=0.08)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    top.axhline(0, color="k", lw=0.5)
    top.set(ylabel="rsi_t", title="Restricted secant (rsi) and error bound (eb) ratios")
    eb = _drawable(table["eb"].to_numpy())
    bottom.set(xlabel="step", ylabel="eb_t",
               yscale="log" if np.any(np.isfinite(eb) & (eb > 0)) else "linear")
    save_png(fig, path)


def mli_figure(path: Path, summary: dict) -> None:
    """F(x_0 + alpha (x* - x_0)) against alpha, its largest bump named."""
    fig, ax = new_axes()
    mli = summary["mli"]
    alpha, loss = _floats(mli.get("alpha", [])), _floats(mli.get("loss", []))
    ax.plot(alpha, np.where(np.isfinite(loss), loss, np.nan), "o-", ms=3)
    mark_infinities(ax, alpha, loss, "tab:red", "F")
    bump = mli.get("max_bump")
    verdict = "monotone" if mli.get("monotone") else "not monotone"
    ax.text(0.02, 0.03, f"{verdict}; largest rise {math.nan if bump is None else bump:.3g}",
            transform=ax.transAxes)
    ax.set(xlabel="alpha", ylabel="F(x_0 + alpha (x* - x_0))",
           title="Loss on the segment from x_0 to x*")
    if np.all(np.isfinite(loss)) and np.all(loss > 0) and loss.max() > 10 * loss.min():
        ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save_png(fig, path)


def write_figures(directory: Path, table: pd.DataFrame, summary: dict) -> list[Path]:
    """Training loss, gamma per epoch, the distribution of r and D over steps (only the
    loss for a summary without an analysis); the paths written."""
    with np.errstate(all="ignore"):  # nan and inf are drawn as such, not warned about
        return _write_figures(Path(directory), table, summary)


def _write_figures(directory: Path, table: pd.DataFrame, summary: dict) -> list[Path]:
    paths = [directory / name for name in FIGURES]
    raw = summary.get("window")
    window = (int(raw[0]), int(raw[1])) if raw is not None else None
    _loss(paths[0], table, summary, window)
    if window is None or summary.get("gamma_hat") is None:
        return paths[:1]
    _gamma_per_epoch(paths[1], summary)
    _r_distribution(paths[2], table, summary, window)
    _distance(paths[3], table, window)
    if "rsi" in table and "eb" in table:  # recorded gradients
        paths.append(directory / GEOMETRY_FIGURES[0])
        _geometry(paths[-1], table, summary, window)
    if summary.get("mli"):
        paths.append(directory / GEOMETRY_FIGURES[1])
        mli_figure(paths[-1], summary)
    if "lambda_max" in table and np.isfinite(table["lambda_max"].to_numpy(dtype=float)).any():
        paths.append(directory / CURVATURE_FIGURE)
        _sharpness(paths[-1], table, summary)
    return paths
