"""The run's PNG figures, drawn from its metrics table and summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from trajreg.run.rundir import replace_atomic

FIGURES = ("loss.png", "gamma_per_epoch.png", "r_distribution.png", "distance.png")


def _axes() -> tuple[Figure, object]:
    # Figure objects, not pyplot: no global state, safe in worker threads. A fixed
    # layout and plain-text labels: tight/constrained layout and mathtext parsing
    # cost more than drawing (about 0.15 s a figure), paid by every run of a study
    fig = Figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    return fig, fig.add_subplot()


def _thin(n: int, most: int = 4000) -> slice:
    return slice(None, None, max(1, -(-n // most)))


def save_png(fig: Figure, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` atomically, with cheap plain-text log-axis ticks."""
    for ax in fig.axes:
        # log axes' minor ticks and mathtext tick labels were most of the drawing time
        ax.minorticks_off()
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":  # labelled 1-2-5 ticks, plain text
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def write_figures(directory: Path, table: pd.DataFrame, summary: dict) -> list[Path]:
    """Training loss, gamma per epoch, the distribution of r and D over steps."""
    directory = Path(directory)
    start, end = summary["window"]
    paths = [directory / name for name in FIGURES]

    fig, ax = _axes()
    every = _thin(len(table))
    ax.plot(table["step"].to_numpy()[every], table["loss"].to_numpy()[every], lw=0.6,
            alpha=0.5, label="minibatch loss l_t(x_t)")
    ends = [0, *summary["epoch_ends"]]
    ax.plot(ends[: len(summary["full_loss"])], summary["full_loss"], "o-", ms=3,
            label="full training loss F_k")
    ax.axvspan(start, end, color="tab:green", alpha=0.08, label="window")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Training loss")
    ax.legend()
    save_png(fig, paths[0])

    fig, ax = _axes()
    for key, series in summary["gamma_hat_per_epoch"].items():
        series = np.asarray(series, dtype=float)
        ax.plot(np.arange(1, len(series) + 1), series, "o-", ms=3,
                label=f"gamma_hat, eps={key}")
    bar = np.asarray(summary["gamma_bar_per_epoch"], dtype=float)
    ax.plot(np.arange(1, len(bar) + 1), bar, "s--", ms=3, label="gamma_bar")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="epoch", ylabel="gamma", title="Gamma per epoch")
    ax.legend()
    save_png(fig, paths[1])

    fig, ax = _axes()
    r = table["r"].to_numpy()[start:end]
    r = r[np.isfinite(r)]
    if len(r):
        lo, hi = np.quantile(r, [0.01, 0.99])
        ax.hist(np.clip(r, lo, hi), bins=60, color="tab:blue")
    for key, g in summary["gamma_hat"].items():
        if np.isfinite(g):
            ax.axvline(g, ls="--", color="tab:red", lw=1)
            ax.annotate(f"eps={key}", (g, ax.get_ylim()[1] * 0.9), color="tab:red")
    ax.set(xlabel="r_t (clipped to 1-99%)", ylabel="steps",
           title="Distribution of r_t over the window")
    save_png(fig, paths[2])

    fig, ax = _axes()
    ax.plot(table["step"].to_numpy()[every], table["D"].to_numpy()[every], lw=0.8)
    ax.axvspan(start, end, color="tab:green", alpha=0.08)
    ax.set(xlabel="step", ylabel="D_t = |x_t - x*|^2", yscale="log",
           title="Squared distance to the reference")
    save_png(fig, paths[3])
    return paths
