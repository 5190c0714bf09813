"""The report's sentences: one per comparison, one per technique. Pure: rows in,
strings out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def fmt(x: Any) -> str:
    """A number as the report prints it: 4 significant digits, n/a, +inf, -inf.

    >>> fmt(0.123456), fmt(float("nan")), fmt(float("-inf")), fmt(3)
    ('0.1235', 'n/a', '-inf', '3')
    """
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
    by = f" (by {fmt(diff)})" if np.isfinite(diff) else ""
    larger = "larger" if row["gamma_larger"] else "not larger"
    faster = "faster" if row["faster"] else "not faster"
    return (f"{row['technique']} {row['with']} vs {row['without']} on {row['architecture']} "
            f"({row['dataset']}{'; ' + row['context'] if row['context'] else ''}): "
            f"{name.strip()} is {larger} with {row['with']}: median {fmt(g_with)} vs "
            f"{fmt(g_without)}{by}, larger in {int(row['gamma_larger_seeds'])} of {n} seeds; "
            f"convergence is {faster}: median auc_log_loss {fmt(row['speed_with'])} vs "
            f"{fmt(row['speed_without'])}, faster in {int(row['faster_seeds'])} of {n} seeds.")


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
