"""From per-step quantities to a run summary: pure functions, no I/O, no training."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trajreg import principle as P
from trajreg.principle import curvature as CV
from trajreg.record.measured import Measured
from trajreg.record.modes import MODES
from trajreg.record.modes.base import with_words
from trajreg.run.summary import Summary, trained
from trajreg.train.config import AnalysisConfig
from trajreg.train.loop import TrainLog

METRIC_COLUMNS = ["step", "epoch", "lr", "loss", "loss_star", "D", "a", "s", "b", "c",
                  "cos_v", "r", "full_loss"]
# from D and a mode's g_dot, g_norm2 (recorded gradients); recomputed on re-analysis
GEOMETRY_COLUMNS = ("rsi", "eb", "cos_g")
SKETCH_ERROR_WARN = 0.10  # sketch_error.gamma_rel above which the analysis warns


@dataclass(frozen=True)
class AnalysisOptions:
    """What ``summarize`` needs beyond the data (mirrors ``AnalysisConfig``)."""

    eps: tuple[float, ...] = (0.0, 0.05)
    tau: float = 0.05
    max_fraction: float = 0.9
    delta: float | None = None  # None: delta_t = eta_t / 2
    loss_threshold: float = 0.1
    window: tuple[int, int] | None = None  # None: the converging phase
    train_margin: float = 0.1  # trained: F_final <= (1 - margin) F_0

    @classmethod
    def from_config(cls, acfg: AnalysisConfig, **overrides: Any) -> AnalysisOptions:
        base: dict[str, Any] = dict(
            eps=tuple(acfg.eps), tau=acfg.tau, max_fraction=acfg.max_fraction,
            delta=acfg.delta, loss_threshold=acfg.loss_threshold, train_margin=acfg.train_margin)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def deltas(lr: np.ndarray, delta: float | None) -> np.ndarray:
    return P.default_delta(lr) if delta is None else np.full(len(lr), float(delta))


def step_table(log: TrainLog, measured: Measured, delta: float | None = None) -> pd.DataFrame:
    """One row per measured step (every step, or the sampled ones) with every per-step
    quantity; ``full_loss`` F_k sits on the row of the last step of epoch k when that
    step was measured."""
    steps = measured.steps
    loss = (np.asarray(log.loss, dtype=np.float64)[steps] if measured.loss is None
            else measured.loss)
    epoch = np.asarray(log.epoch, dtype=np.int64)[steps]
    lr, D, a, s = measured.lr, measured.D, measured.a, measured.s
    b = P.loss_gap(loss, measured.loss_star)
    table = pd.DataFrame({
        "step": steps, "epoch": epoch, "lr": lr, "loss": loss,
        "loss_star": measured.loss_star, "D": D, "a": a, "s": s, "b": b,
        "c": P.cosine(a, D, s),
        "cos_v": P.cos_v(a, D, s),  # the update's cosine (= c), beside the gradient's
        "r": P.ratio(a, b, s, deltas(lr, delta)),
        "full_loss": np.nan,
        **measured.columns,
    })
    row_of = {int(t): i for i, t in enumerate(steps)}
    full = table["full_loss"].to_numpy().copy()
    for end, f in zip(log.epoch_ends, log.full_loss[1:], strict=False):
        if end - 1 in row_of:
            full[row_of[end - 1]] = f
    table["full_loss"] = full
    # trajectory geometry (docs/principle.md, section 14) when the mode recorded g_t
    if "g_dot" in table.columns and "g_norm2" in table.columns:
        g_dot, g_norm2 = table["g_dot"].to_numpy(), table["g_norm2"].to_numpy()
        table["rsi"] = P.rsi(g_dot, D)
        table["eb"] = P.eb(g_norm2, D)
        table["cos_g"] = P.cos_g(g_dot, D, g_norm2)
    return table


def _key(eps: float) -> str:
    return str(float(eps))


def window_of(log: TrainLog, k: int, f_star: float, options: AnalysisOptions,
              n_steps: int) -> tuple[int, int]:
    """The analysis window [start, end) of steps: the given one, or the converging phase
    within the first k steps (x* = x_k). A diverged run whose x* is no better than x_0
    has no converging phase: an empty window, so no gamma comes from the diverged part."""
    if options.window is not None:
        start, end = options.window
        if not 0 <= start < end <= n_steps:
            raise ValueError(f"window [{start}, {end}) is not inside the {n_steps} steps")
        return start, end
    if k == 0 or not math.isfinite(f_star):
        return 0, 0
    if log.diverged_step is not None and not f_star < log.full_loss[0]:
        return 0, 0
    ends = [e for e in log.epoch_ends if e <= k]
    full = list(log.full_loss[: len(ends) + 1])
    if not ends:  # x* lies inside the first epoch: treat [0, k) as one epoch ending at x*
        ends, full = [k], [log.full_loss[0], f_star]
    return P.converging_window(full, ends, f_star, options.tau, options.max_fraction)


def summarize(table: pd.DataFrame, *, log: TrainLog, reference_step: int, f_star: float,
              options: AnalysisOptions, words: Mapping[str, str] | None = None,
              sampled: bool = True) -> dict:
    """The regularity analysis of the measured steps against x* = x_k (k =
    ``reference_step``): the summary.json keys of the analysis (see ``Summary``).
    ``words``: how the record mode's options are spelled in warnings (``RecordMode.plan``);
    ``sampled``: whether the measured steps are a random sample (intervals)."""
    k = reference_step
    start, end = window_of(log, k, f_star, options, log.steps)
    steps = table["step"].to_numpy()
    w = (steps >= start) & (steps < end)
    a, b, s = (table[c].to_numpy() for c in ("a", "b", "s"))
    lr, epoch = table["lr"].to_numpy(), table["epoch"].to_numpy()
    delta = deltas(lr, options.delta)
    gamma = {_key(e): P.gamma_hat(a[w], b[w], s[w], delta[w], e) for e in options.eps}
    kappa = {_key(e): P.kappa_hat(a[w], b[w], s[w], lr[w], e) for e in options.eps}
    g0 = gamma.get("0.0", P.gamma_hat(a[w], b[w], s[w], delta[w], 0.0))
    first = np.flatnonzero(w)
    # the bound telescopes over consecutive steps: only where every window step is measured
    bound = (P.convergence_bound(b[w], lr[w], float(table["D"].iloc[first[0]]), g0)
             if first.size and len(first) == end - start else None)
    sens_eps = sorted({0.0, 0.05, 0.1, *options.eps})
    return {
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
        "sensitivity": {
            "gamma_hat": {_key(e): P.gamma_hat(a[w], b[w], s[w], delta[w], e) for e in sens_eps},
            "kappa_hat": {_key(e): P.kappa_hat(a[w], b[w], s[w], lr[w], e) for e in sens_eps},
        },
        "options": {"eps": list(options.eps), "tau": options.tau,
                    "max_fraction": options.max_fraction,
                    "delta": "eta/2" if options.delta is None else options.delta,
                    "window": "converging phase" if options.window is None else "given"},
        # a random sample of steps (one-pass modes): intervals for the full window
        **(sampled_summary(table, w, delta, tuple(options.eps), words=words)
           if sampled else {}),
        **geometry_summary(table, w, options.eps),
    }


def sampled_summary(table: pd.DataFrame, window: np.ndarray, delta: np.ndarray,
                    eps: tuple[float, ...], confidence: float = 0.95,
                    words: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The summary keys of a run measured on a random sample of steps (``{}`` otherwise):
    ``trajreg.principle.onepass_summary`` of the step table's columns, and its warnings.

    ``table`` is the analysis' step table, ``window`` its rows in the analysis window,
    ``delta`` delta_t of every row. The exact sample is every row of a sampled table
    (mode sample), or the rows with a finite ``a_exact`` (mode sketch: the table holds
    every step, estimated; ``a_exact``/``D_exact`` are exact on its check sample).

    Warns when the sample of a mode sample run cannot bound gamma_hat on both sides
    (``insufficient samples``; a sketch's check sample is small by design), and when
    the sketch's gamma_hat on the check steps is more than ``SKETCH_ERROR_WARN`` off.
    ``words``: how the caller's API spells the options, for the warnings
    (``RecordMode.plan``; None: the config keys).
    """
    w = with_words(words)
    col = {c: table[c].to_numpy() for c in ("step", "a", "b", "s", "lr")}
    sketch = ({"a_exact": table["a_exact"].to_numpy(), "D": table["D"].to_numpy(),
               "D_exact": table["D_exact"].to_numpy()} if "a_exact" in table.columns else {})
    out = P.onepass_summary(col["step"], col["a"], col["b"], col["s"], col["lr"], delta,
                            window, eps, confidence, **sketch)
    if not out:
        return out
    if "sketch_error" in out:
        _warn_sketch(out["sketch_error"], w)
        return out
    short = [key for key, (low, high) in out["gamma_hat_ci"].items()
             if high is None or (float(key) > 0 and low is None)]
    if short:
        warnings.warn(f"insufficient samples: {out['n_sampled_window']} exactly measured steps "
                      f"in the analysis window cannot bound gamma_hat({', '.join(short)}) on "
                      f"both sides (null in gamma_hat_ci); raise {w['min_steps']} or "
                      f"{w['rate']}, or train longer", UserWarning, stacklevel=3)
    return out


def _warn_sketch(err: dict[str, Any], w: Mapping[str, str]) -> None:
    """Warn when the sketch's gamma_hat on the check steps is more than 10% off."""
    bad = {key: v for key, v in err.get("gamma_rel", {}).items()
           if v is not None and v > SKETCH_ERROR_WARN}
    if not bad:
        return
    worst = max(bad, key=lambda key: bad[key])
    at = err["a_rel_at_quantile"].get(worst)
    warnings.warn(f"sketch_error: on the {err['n_window']} exactly checked steps of the analysis "
                  f"window the sketch's gamma_hat({worst}) is {100 * bad[worst]:.1f}% off the "
                  f"exact value (more than {100 * SKETCH_ERROR_WARN:.0f}%"
                  + ("" if at is None else f"; a_t's error at the deciding step "
                     f"{100 * at:.1f}%") + "): the run's gamma_hat is likely off as much. "
                  f"Raise {w['dim']} (the error falls as 1/sqrt(k): "
                  f"{(bad[worst] / 0.05) ** 2:.0f}x k for about 5%), or record with mode "
                  "store", UserWarning, stacklevel=4)


def geometry_summary(table: pd.DataFrame, w: np.ndarray, eps: tuple[float, ...]) -> dict:
    """The window's geometry keys (docs/principle.md, section 14): ``cos_v_positive``
    always; with recorded gradients ``mu_hat``, ``L_hat`` and ``rsi_eb_ratio`` per eps
    and ``cos_g_positive``."""
    out: dict = {"cos_v_positive": P.fraction_positive(table["cos_v"].to_numpy()[w])}
    if "rsi" not in table.columns:
        return out
    rsi, eb = table["rsi"].to_numpy()[w], table["eb"].to_numpy()[w]
    mu = {_key(e): P.mu_hat(rsi, e) for e in eps}
    L = {_key(e): P.L_hat(eb, e) for e in eps}
    out.update(mu_hat=mu, L_hat=L,
               rsi_eb_ratio={key: P.rsi_eb_ratio(mu[key], L[key]) for key in mu},
               cos_g_positive=P.fraction_positive(table["cos_g"].to_numpy()[w]))
    return out


@dataclass(frozen=True)
class RunFacts:
    """What the summary says about a run beyond its measurements."""

    n_params: int
    task: str
    evaluation: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # the integration that trained it
    loss_check: dict | None = None  # integrations: rebuilt losses against training's
    session: dict | None = None  # integrations: how the session read the run


def analyse(log: TrainLog, measured: Measured | None, *, mode: str, reference: str,
            options: AnalysisOptions, facts: RunFacts, best: Measured | None = None,
            words: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, Summary]:
    """The metrics table and the summary of a run: ``measured`` against its reference
    (None: record mode off, losses only); ``best``, when the mode could measure it
    without retraining, the same against the best epoch end (sensitivity). ``words``:
    the mode's ``words`` (how its options are spelled in warnings; None: config keys)."""
    k = log.steps if measured is None else measured.reference_step
    speed = speed_summary(log.full_loss, log.epoch_ends, options.loss_threshold)
    diverged = log.diverged_step is not None
    fields: dict = {}
    if measured is None:
        table = step_table(log, Measured.unmeasured(np.asarray(log.lr), k), options.delta)
    else:
        table = step_table(log, measured, options.delta)
        sampled = mode in MODES and MODES[mode].sampled
        fields = summarize(table, log=log, reference_step=k, f_star=measured.f_star,
                           options=options, words=words, sampled=sampled)
        if best is not None and best.reference_step != k:
            other = summarize(step_table(log, best, options.delta), log=log,
                              reference_step=best.reference_step, f_star=best.f_star,
                              options=options, words=words, sampled=sampled)
            fields["sensitivity"]["reference_best"] = {
                "gamma_hat": other["gamma_hat"], "kappa_hat": other["kappa_hat"],
                "reference_step": best.reference_step}
        elif best is not None:  # the best epoch end is the reference itself
            fields["sensitivity"]["reference_best"] = {
                "gamma_hat": fields["gamma_hat"], "kappa_hat": fields["kappa_hat"],
                "reference_step": k}
        else:
            fields["sensitivity"]["reference_best"] = None
        fields.update(measured.summary)
        if "lambda_max" in table:
            fields["curvature"] = curvature_summary(table, fields["window"],
                                                    fields.get("curvature"))
    summary = Summary(
        n_steps=log.steps, **speed, task=facts.task, evaluation=facts.evaluation,
        record_mode=mode, reference=reference, n_params=facts.n_params, diverged=diverged,
        diverged_step=log.diverged_step,
        trained=trained(log.full_loss, diverged, options.train_margin),
        source=facts.source, loss_check=facts.loss_check, session=facts.session, **fields)
    return table, summary


def curvature_summary(table: pd.DataFrame, window: Sequence[int],
                      known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``record.curvature`` over the analysis window: how many sampled steps, the
    fraction of them above the edge of stability (lambda_max against (2 + 2 momentum) /
    eta; Adam family: lambda_max_precond against (2 + 2 beta_1) / ((1 - beta_1) eta)), the
    medians of the four quantities and how often Lanczos converged. ``known``: what the
    measurement added (lambda_max at x*)."""
    steps = table["step"].to_numpy()
    lam = table["lambda_max"].to_numpy(dtype=np.float64)
    sampled = np.isfinite(lam)
    w = sampled & (steps >= window[0]) & (steps < window[1])
    precond = table["lambda_max_precond"].to_numpy(dtype=np.float64)
    adam = bool(np.isfinite(precond[sampled]).any())
    threshold = table["eos_threshold"].to_numpy(dtype=np.float64)
    compared = precond if adam else lam

    def median(column: str) -> float:
        values = table[column].to_numpy(dtype=np.float64)[w]
        values = values[np.isfinite(values)]
        return float(np.median(values)) if values.size else math.nan

    converged = table["lambda_max_converged"].to_numpy(dtype=np.float64)[sampled]
    return {
        **dict(known or {}),
        "steps": int(sampled.sum()), "steps_window": int(w.sum()),
        "compared": "lambda_max_precond" if adam else "lambda_max",
        "threshold": ("(2 + 2 beta1) / ((1 - beta1) eta)" if adam
                      else "(2 + 2 momentum) / eta"),
        "above_fraction": CV.fraction_above(compared[w], threshold[w]),
        "median": {c: median(c) for c in ("lambda_max", "curv_update", "critical_sharpness",
                                          "lambda_max_precond", "eos_threshold")},
        "converged_fraction": float(converged.mean()) if converged.size else math.nan,
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
