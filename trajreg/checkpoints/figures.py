"""The figures of a checkpoint series: F over steps, the epochwise a_k and b_k with the
displacement's a_disp_k, r per checkpoint and per interval, and the MLI segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from trajreg.run.figures import mark_infinities, mli_figure, new_axes, save_png

FIGURES = ("loss.png", "a_k.png", "gamma_per_interval.png")


def _axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    """A run figure's axes (``run.figures.new_axes``), over the checkpoints' steps."""
    fig, ax = new_axes()
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    return fig, ax


def _scale(ax: Axes, values: list[np.ndarray]) -> None:
    """A log axis when every finite nonzero value is positive (the reference's own row
    is 0: left off the axis), else symlog linear within 1e-3 of the largest magnitude."""
    finite = np.concatenate([v[np.isfinite(v) & (v != 0)] for v in values])
    if finite.size == 0:
        return
    if np.all(finite > 0):
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=max(1e-3 * float(np.abs(finite).max()), 1e-300))


def write_figures(directory: Path, table: pd.DataFrame, summary: dict) -> list[Path]:
    """The series' PNGs in ``directory``; the paths written."""
    with np.errstate(all="ignore"):
        return _write(Path(directory), table, summary)


def _write(directory: Path, table: pd.DataFrame, summary: dict) -> list[Path]:
    steps = table["step"].to_numpy(dtype=np.float64)
    paths = [directory / name for name in FIGURES]
    ref = summary.get("reference_step")

    fig, ax = _axes("F at the checkpoints", "F (evaluation loss)")
    F = table["F"].to_numpy(dtype=np.float64)
    ax.plot(steps, np.where(np.isfinite(F), F, np.nan), "o-", ms=3)
    mark_infinities(ax, steps, F, "tab:red", "F")
    if ref is not None:
        ax.axvline(ref, color="grey", ls=":", label="x*")
        ax.legend()
    if np.all(np.isfinite(F)) and np.all(F > 0) and F.max() > 10 * F.min():
        ax.set_yscale("log")
    save_png(fig, paths[0])

    fig, ax = _axes("Alignment with x*: gradient (a_k) and displacement (a_disp)",
                    "value")
    drawn = []
    for column, label in (("a", "a_k = <x_k - x*, grad F>"), ("b", "b_k = F_k - F*"),
                          ("a_disp", "a_disp = <x_k - x*, x_k - x_k+1>")):
        y = table[column].to_numpy(dtype=np.float64)
        drawn.append(y)
        ax.plot(steps, np.where(np.isfinite(y) & (y != 0), y, np.nan), "o-", ms=3,
                label=label)
    _scale(ax, drawn)
    ax.legend(fontsize=8)
    save_png(fig, paths[1])

    fig, ax = _axes("r per checkpoint (gradient) and per interval (displacement)",
                    "r")
    drawn = []
    gammas = ((summary.get("gamma_hat") or {}).get("0.0"),
              ((summary.get("checkpoints") or {}).get("gamma_hat_disp") or {}).get("0.0"))
    for (column, label), gamma, color in zip(
            (("r", "r_k = a_k / b_k"), ("r_disp", "r_disp = (a_disp - s_disp / 2) / b_k")),
            gammas, ("tab:blue", "tab:orange"), strict=True):
        y = table[column].to_numpy(dtype=np.float64)
        drawn.append(y)
        ax.plot(steps, np.where(np.isfinite(y), y, np.nan), "o-", ms=3, label=label,
                color=color)
        mark_infinities(ax, steps, y, "tab:red", label.split(" ")[0])
        if gamma is not None and np.isfinite(gamma):
            ax.axhline(gamma, color=color, ls="--", lw=0.8, label=f"gamma_hat_0 {gamma:.3g}")
    window = summary.get("window")
    if window and window[1] > window[0]:
        last = min(int(window[1]), len(steps)) - 1
        ax.axvspan(steps[int(window[0])], steps[last], color="grey", alpha=0.1,
                   label="window")
    _scale(ax, drawn)
    ax.legend(fontsize=8)
    save_png(fig, paths[2])

    if summary.get("mli"):
        paths.append(directory / "mli.png")
        mli_figure(paths[-1], summary)
    return paths
