"""From per-step quantities to a run summary: pure functions, no I/O, no training."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trajreg import principle as P

METRIC_COLUMNS = ["step", "epoch", "lr", "loss", "loss_star", "D", "a", "s", "b", "c", "r",
                  "full_loss"]


@dataclass(frozen=True)
class AnalysisOptions:
    """What ``summarize`` needs beyond the data (mirrors ``AnalysisConfig``)."""

    eps: tuple[float, ...] = (0.0, 0.05)
    tau: float = 0.05
    max_fraction: float = 0.9
    delta: float | None = None  # None: delta_t = eta_t / 2
    loss_threshold: float = 0.1
    window: tuple[int, int] | None = None  # None: the converging phase

    @classmethod
    def from_config(cls, acfg, **overrides) -> AnalysisOptions:
        base = dict(eps=tuple(acfg.eps), tau=acfg.tau, max_fraction=acfg.max_fraction,
                    delta=acfg.delta, loss_threshold=acfg.loss_threshold)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def deltas(lr: np.ndarray, delta: float | None) -> np.ndarray:
    return P.default_delta(lr) if delta is None else np.full(len(lr), float(delta))


def step_table(*, epoch, lr, loss, loss_star, D, a, s, epoch_ends, full_loss,
               delta: float | None = None) -> pd.DataFrame:
    """One row per optimizer step t < k with every per-step quantity.

    ``D`` has k+1 entries (D_k = ||x_k - x*||^2 closes the trajectory); the table keeps
    D_0..D_{k-1}. ``full_loss`` F_1.. sits on the row of the last step of each epoch.
    """
    k = len(a)
    lr = np.asarray(lr, dtype=np.float64)[:k]
    b = P.loss_gap(np.asarray(loss[:k]), np.asarray(loss_star[:k]))
    table = pd.DataFrame({
        "step": np.arange(k), "epoch": np.asarray(epoch[:k], dtype=np.int64), "lr": lr,
        "loss": np.asarray(loss[:k], dtype=np.float64),
        "loss_star": np.asarray(loss_star[:k], dtype=np.float64),
        "D": np.asarray(D[:k], dtype=np.float64), "a": a, "s": s, "b": b,
        "c": P.cosine(a, np.asarray(D[:k]), s), "r": P.ratio(a, b, s, deltas(lr, delta)),
        "full_loss": np.nan,
    })
    for end, f in zip(epoch_ends, full_loss[1:], strict=False):
        if end <= k:
            table.loc[end - 1, "full_loss"] = f
    return table


def _key(eps: float) -> str:
    return str(float(eps))


def summarize(table: pd.DataFrame, *, full_loss: list[float], epoch_ends: list[int],
              reference_step: int, f_star: float, options: AnalysisOptions) -> dict:
    """The regularity analysis of a run's steps measured against x* = x_k.

    k = ``reference_step``: the default window lies within the first k steps.

    ``full_loss`` is the run's F_0 .. F_E and ``epoch_ends`` the cumulative step counts
    of its epochs; the window only uses the epochs completed within the k steps.
    """
    k = reference_step
    a, b, s = (table[c].to_numpy() for c in ("a", "b", "s"))
    lr, epoch = table["lr"].to_numpy(), table["epoch"].to_numpy()
    delta = deltas(lr, options.delta)
    ends = [e for e in epoch_ends if e <= k]
    full = list(full_loss[: len(ends) + 1])
    if not ends:  # x* lies inside the first epoch: treat [0, k) as one epoch ending at x*
        ends, full = [k], [full_loss[0], f_star]
    if options.window is not None:
        start, end = options.window
        if not 0 <= start < end <= len(table):
            raise ValueError(f"window [{start}, {end}) is not inside the {len(table)} steps")
    elif k == 0:
        start, end = 0, 0
    else:
        start, end = P.converging_window(full, ends, f_star, options.tau, options.max_fraction)
    w = slice(start, end)
    gamma = {_key(e): P.gamma_hat(a[w], b[w], s[w], delta[w], e) for e in options.eps}
    kappa = {_key(e): P.kappa_hat(a[w], b[w], s[w], lr[w], e) for e in options.eps}
    g0 = gamma.get("0.0", P.gamma_hat(a[w], b[w], s[w], delta[w], 0.0))
    bound = P.convergence_bound(b[w], lr[w], float(table["D"].iloc[start]) if k else math.nan,
                                g0) if end > start else None
    return {
        "n_steps": len(table),
        "reference_step": k,
        "window": [int(start), int(end)],
        "gamma_hat": gamma,
        "kappa_hat": kappa,
        "gamma_bar": P.gamma_bar(a[w], b[w], s[w], delta[w]),
        "kappa_bar": P.kappa_bar(a[w], b[w], s[w], lr[w]),
        "rp_fraction": {key: P.fraction_obeying(a[w], b[w], s[w], delta[w], g)
                        for key, g in gamma.items()},
        "star_convex_fraction": P.star_convex_fraction(a[w], b[w]),
        "r_quantiles": P.r_quantiles(a[w], b[w], s[w], delta[w]),
        "gamma_hat_per_epoch": {_key(e): P.gamma_hat_per_epoch(a, b, s, delta, epoch, e).tolist()
                                for e in options.eps},
        "gamma_bar_per_epoch": P.gamma_bar_per_epoch(a, b, s, delta, epoch).tolist(),
        "bound": None if bound is None else {
            "gamma": bound.gamma, "lhs": bound.lhs, "rhs": bound.rhs, "holds": bound.holds},
        "f_star": f_star,
        **speed_summary(full_loss, epoch_ends, options.loss_threshold),
        "options": {"eps": list(options.eps), "tau": options.tau,
                    "max_fraction": options.max_fraction,
                    "delta": "eta/2" if options.delta is None else options.delta,
                    "window": "converging phase" if options.window is None else "given"},
    }


def speed_summary(full_loss: list[float], epoch_ends: list[int], threshold: float) -> dict:
    """Convergence speed of the whole run, whatever the reference point."""
    if len(full_loss) > 1:
        steps_thr, epochs_thr = P.steps_to_threshold(full_loss, epoch_ends, threshold)
        auc = P.auc_log_loss(full_loss)
    else:  # no epoch completed (a run that diverged in its first epoch)
        steps_thr, epochs_thr = (0, 0) if full_loss[0] <= threshold else (None, None)
        auc = math.nan
    return {
        "full_loss": list(full_loss),
        "epoch_ends": list(epoch_ends),
        "final_loss": full_loss[-1],
        "loss_threshold": threshold,
        "steps_to_threshold": steps_thr,
        "epochs_to_threshold": epochs_thr,
        "auc_log_loss": auc,
    }
