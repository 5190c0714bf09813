"""The interval statistics of a run measured on a random sample of steps.

The one-pass record modes measure a_t, b_t, s_t exactly on a random sample of
steps only: mode ``sample`` on the kept steps (every measured step is exact),
mode ``sketch`` on a check sample (every step's a_t, D_t are CountSketch
estimates; a_exact, D_exact are exact where finite). :func:`onepass_summary`
turns a run's measured steps into the summary's intervals for the full window
(docs/principle.md, section 12) and, for a sketch, the sketch's own error on
the check sample (:func:`sketch_check`, section 13).

Pure statistics: the functions return numbers and never warn. Whether a null
side or a large ``gamma_rel`` deserves a warning, and in which words, is the
caller's business (``trajreg.run.analysis``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trajreg.principle._validate import as_1d, as_delta, check_same_length, to_numpy
from trajreg.principle.estimate import gamma_hat
from trajreg.principle.interval import (
    Interval,
    gamma_bar_interval,
    gamma_hat_interval,
    kappa_hat_interval,
)
from trajreg.principle.quantities import ratio

__all__ = [
    "onepass_summary",
    "sketch_check",
]


def _interval(iv: Interval) -> list[float | None]:
    """An :class:`Interval` as the summary's ``[low, high]`` (floats or None)."""
    return [None if v is None else float(v) for v in iv]


def _median_rel(estimate: np.ndarray, exact: np.ndarray) -> float:
    """median_t |estimate_t - exact_t| / |exact_t| over the steps where it is finite
    (nan when there is none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(estimate - exact) / np.abs(exact)
    rel = rel[np.isfinite(rel)]
    return float(np.median(rel)) if rel.size else math.nan


def onepass_summary(step: Any, a: Any, b: Any, s: Any, lr: Any, delta: Any, window: Any,
                    eps: tuple[float, ...], confidence: float = 0.95, *,
                    a_exact: Any = None, D: Any = None, D_exact: Any = None,
                    ) -> dict[str, Any]:
    """The summary keys of a run measured on a random sample of steps (``{}`` otherwise).

    One entry per measured step t of the run: ``step`` (its index), ``a``, ``b``,
    ``s``, ``lr`` (eta_t), ``delta`` (delta_t; a scalar is broadcast) and ``window``
    (a bool, True for the steps of the analysis window). The exact sample E is

    - mode sample (``a_exact`` None): every measured step, a_t exact. If the steps
      are 0, 1, ..., n-1 (every step measured) the estimates are exact and the
      result is ``{}``;
    - mode sketch (``a_exact`` given, with ``D`` and ``D_exact``): ``a`` and ``D``
      are the sketch's estimates at every step, ``a_exact`` and ``D_exact`` exact on
      the check sample E = {t : a_exact_t finite} and nan elsewhere.

    With M = E and the window (n = |M|) and the exact a_t on M, the keys are:

    - ``n_sampled_window``: n;
    - ``gamma_hat_ci``/``kappa_hat_ci``: ``{str(eps): [low, high]}``,
      ``gamma_hat_interval(a, b, s, delta, eps)``/``kappa_hat_interval(a, b, s, lr,
      eps)`` on M, intervals for the full window's value; for eps = 0 only the upper
      side exists (``[None, high]``). A None side means insufficient samples to bound
      that side (for eps = 0.05 at 95%, fewer than 72 window samples);
    - ``gamma_bar_ci``: ``gamma_bar_interval(a, b, s, delta)`` on M (Fieller), None
      sides when unbounded;
    - ``sketch_error`` (mode sketch only): ``a_median_rel`` = median_{t in E}
      |a_t - a_exact_t| / |a_exact_t|, ``D_median_rel`` the same for D, ``n`` = |E|,
      and the keys of ``sketch_check(a[M], a_exact[M], b[M], s[M], delta[M], eps)``.

    >>> n = 100  # every other step of 200 kept; b = 1, s = 0: r_t = a_t
    >>> out = onepass_summary(np.arange(0, 2 * n, 2), np.arange(1.0, n + 1), np.ones(n),
    ...                       np.zeros(n), np.full(n, 0.5), 0.0, np.ones(n, bool), (0.0, 0.05))
    >>> out["n_sampled_window"], out["gamma_hat_ci"], out["kappa_hat_ci"]["0.05"]
    (100, {'0.0': [None, 1.0], '0.05': [1.0, 11.0]}, [0.5, 5.5])
    >>> onepass_summary(np.arange(n), np.ones(n), np.ones(n), np.zeros(n), np.full(n, 0.5),
    ...                 0.0, np.ones(n, bool), (0.0,))  # every step measured
    {}
    """
    steps = np.asarray(step)
    if steps.ndim != 1:
        raise ValueError(f"step must be 1-D, got shape {steps.shape}")
    b_arr, s_arr, lr_arr = as_1d(b, "b"), as_1d(s, "s"), as_1d(lr, "lr")
    a_arr = as_1d(a, "a")
    w = np.asarray(window, dtype=bool)
    n_steps = check_same_length(step=steps, a=a_arr, b=b_arr, s=s_arr, lr=lr_arr, window=w)
    # checked (finite) where used: on the window's exact sample, by the intervals
    d_arr = to_numpy(delta, "delta")
    d_arr = np.full(n_steps, float(d_arr)) if d_arr.ndim == 0 else as_1d(d_arr, "delta")
    check_same_length(a=a_arr, delta=d_arr)
    sketched = a_exact is not None
    if sketched:
        if D is None or D_exact is None:
            raise ValueError("a_exact needs D and D_exact (mode sketch)")
        a_ex = as_1d(a_exact, "a_exact")
        D_arr, D_ex = as_1d(D, "D"), as_1d(D_exact, "D_exact")
        check_same_length(a=a_arr, a_exact=a_ex, D=D_arr, D_exact=D_ex)
        exact = np.isfinite(a_ex)
    else:
        if n_steps == 0 or (steps == np.arange(n_steps)).all():
            return {}  # every step measured: the estimates are exact
        exact = np.ones(n_steps, dtype=bool)
        a_ex = a_arr
    m = exact & w
    n = int(m.sum())
    am, bm, sm, dm = a_ex[m], b_arr[m], s_arr[m], d_arr[m]
    out: dict[str, Any] = {"n_sampled_window": n, "gamma_hat_ci": {}, "kappa_hat_ci": {}}
    for e in eps:
        key = str(float(e))
        out["gamma_hat_ci"][key] = _interval(gamma_hat_interval(am, bm, sm, dm, e, confidence))
        out["kappa_hat_ci"][key] = _interval(kappa_hat_interval(am, bm, sm, lr_arr[m], e,
                                                                confidence))
    out["gamma_bar_ci"] = _interval(gamma_bar_interval(am, bm, sm, dm, confidence))
    if sketched:
        out["sketch_error"] = {"a_median_rel": _median_rel(a_arr[exact], a_ex[exact]),
                               "D_median_rel": _median_rel(D_arr[exact], D_ex[exact]),
                               "n": int(exact.sum()),
                               **sketch_check(a_arr[m], am, bm, sm, dm, eps)}
    return out


def sketch_check(a_sketch: Any, a_exact: Any, b: Any, s: Any, delta: Any,
                 eps: tuple[float, ...]) -> dict[str, Any]:
    """The sketch's error at the level of gamma, on the check steps of the window.

    The arrays hold the check steps of the window: the sketch's a_t and the exact a_t
    (b_t, s_t are exact in both). Both gamma_hat(eps) of these steps estimate the same
    step set's value, so their difference is the sketch's doing alone, not the
    sample's. For each eps > 0 (eps = 0, a minimum of noisy values, is biased down at
    any k and left out), with g_sk = gamma_hat(a_sketch, b, s, delta, eps) and g_ex the
    same with a_exact:

        gamma_rel         = |g_sk - g_ex| / |g_ex|   (None if g_ex is 0 or not finite)
        a_rel_at_quantile = max_{t in T} |a_sketch_t - a_exact_t| / |a_exact_t|,

    T the steps with b_t > 0 whose r_t (exact, resp. sketched) is nearest g_ex (resp.
    g_sk): the steps that decide either gamma_hat (None if no finite value). Keys
    ``n_window`` (the number of steps), ``gamma_rel`` and ``a_rel_at_quantile``
    ``{str(eps): value}``.

    >>> a = np.arange(1.0, 101.0)  # b = 1, s = 0: r_t = a_t; a sketch 25% low everywhere
    >>> sketch_check(0.75 * a, a, np.ones(100), np.zeros(100), 0.0, (0.0, 0.05))
    {'n_window': 100, 'gamma_rel': {'0.05': 0.25}, 'a_rel_at_quantile': {'0.05': 0.25}}
    """
    a_sk, a_ex = as_1d(a_sketch, "a_sketch"), as_1d(a_exact, "a_exact")
    b_arr, s_arr = as_1d(b, "b"), as_1d(s, "s")
    n = check_same_length(a_sketch=a_sk, a_exact=a_ex, b=b_arr, s=s_arr)
    d_arr = as_delta(delta, n)
    out: dict[str, Any] = {"n_window": n, "gamma_rel": {}, "a_rel_at_quantile": {}}
    r_sk, r_ex = ratio(a_sk, b_arr, s_arr, d_arr), ratio(a_ex, b_arr, s_arr, d_arr)
    upper = np.flatnonzero((b_arr > 0) & np.isfinite(r_sk) & np.isfinite(r_ex))
    for e in eps:
        if e <= 0:
            continue  # a minimum of noisy values: biased down at any k (docs)
        key = str(float(e))
        exact = gamma_hat(a_ex, b_arr, s_arr, d_arr, e) if n else math.nan
        got = gamma_hat(a_sk, b_arr, s_arr, d_arr, e) if n else math.nan
        # None where no relative error exists (an exact value that is 0 or not finite);
        # +inf where the sketch's is not finite and the exact one is
        out["gamma_rel"][key] = (float(abs(got - exact) / abs(exact))
                                 if math.isfinite(exact) and exact != 0 else None)
        # the steps whose r_t is each gamma_hat (an upper breakpoint: b_t > 0)
        deciding = {int(upper[np.argmin(np.abs(r[upper] - g))])
                    for r, g in ((r_ex, exact), (r_sk, got)) if upper.size and math.isfinite(g)}
        with np.errstate(divide="ignore", invalid="ignore"):
            a_rel = [abs(a_sk[i] - a_ex[i]) / abs(a_ex[i]) for i in sorted(deciding)]
        a_rel = [v for v in a_rel if math.isfinite(v)]
        out["a_rel_at_quantile"][key] = float(max(a_rel)) if a_rel else None
    return out
