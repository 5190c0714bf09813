"""The run's PNG figures, drawn from its metrics table and summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FIGURES = ("loss.png", "gamma_per_epoch.png", "r_distribution.png", "distance.png")


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def write_figures(directory: Path, table: pd.DataFrame, summary: dict) -> list[Path]:
    """Training loss, gamma per epoch, the distribution of r and D over steps."""
    directory = Path(directory)
    start, end = summary["window"]
    paths = [directory / name for name in FIGURES]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table["step"], table["loss"], lw=0.6, alpha=0.5, label="minibatch loss $l_t(x_t)$")
    ends = [0, *summary["epoch_ends"]]
    ax.plot(ends[: len(summary["full_loss"])], summary["full_loss"], "o-", ms=3,
            label="full training loss $F_k$")
    ax.axvspan(start, end, color="tab:green", alpha=0.08, label="window")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Training loss")
    ax.legend()
    _save(fig, paths[0])

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, series in summary["gamma_hat_per_epoch"].items():
        series = np.asarray(series, dtype=float)
        ax.plot(np.arange(1, len(series) + 1), series, "o-", ms=3,
                label=rf"$\hat\gamma_{{\epsilon={key}}}$")
    bar = np.asarray(summary["gamma_bar_per_epoch"], dtype=float)
    ax.plot(np.arange(1, len(bar) + 1), bar, "s--", ms=3, label=r"$\bar\gamma$")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="epoch", ylabel="gamma", title="Gamma per epoch")
    ax.legend()
    _save(fig, paths[1])

    fig, ax = plt.subplots(figsize=(6, 4))
    r = table["r"].to_numpy()[start:end]
    r = r[np.isfinite(r)]
    if len(r):
        lo, hi = np.quantile(r, [0.01, 0.99])
        ax.hist(np.clip(r, lo, hi), bins=60, color="tab:blue")
    for key, g in summary["gamma_hat"].items():
        if np.isfinite(g):
            ax.axvline(g, ls="--", color="tab:red", lw=1)
            ax.annotate(rf"$\hat\gamma_{{{key}}}$", (g, ax.get_ylim()[1] * 0.9), color="tab:red")
    ax.set(xlabel="$r_t$ (clipped to 1-99%)", ylabel="steps",
           title="Distribution of $r_t$ over the window")
    _save(fig, paths[2])

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table["step"], table["D"], lw=0.8)
    ax.axvspan(start, end, color="tab:green", alpha=0.08)
    ax.set(xlabel="step", ylabel=r"$D_t = \|x_t - x^*\|^2$", yscale="log",
           title="Squared distance to the reference")
    _save(fig, paths[3])
    return paths
