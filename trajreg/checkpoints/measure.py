"""Measure a finished run from its checkpoints (docs/checkpoints.md).

With checkpoints x_0 .. x_{K-1} at steps t_0 < ... < t_{K-1}, a reference x* (the last,
or the one with the lowest F) and F the evaluation loss (``target.Target``), every
checkpoint k gets

- the epochwise quantities (docs/principle.md, section 9): F(x_k), b_k = F(x_k) - F(x*),
  a_k = <x_k - x*, grad F(x_k)>, s_k = ||grad F(x_k)||^2, D_k = ||x_k - x*||^2, and the
  distance to the first checkpoint;
- for the interval k -> k+1, the displacement u_k = x_k - x_{k+1} taken as one step of
  size one: a_disp_k = <x_k - x*, u_k>, s_disp_k = ||u_k||^2, its cosine with x_k - x*,
  and r_disp_k = (a_disp_k - s_disp_k / 2) / b_k, the principle RP(gamma; 1/2) of that
  step. The exact identity D_k - D_{k+1} = 2 a_disp_k - s_disp_k is checked on every
  interval; F at ``interval_points`` points inside each interval gives its largest
  rise (linear interpolation between consecutive checkpoints).

The summary has gamma_hat (epochwise, delta 0, per eps) over the converging window of
the checkpoints, the star-convexity fraction, the displacement form's gamma and its
convergence bound, the path ratio, and the interpolation from the first checkpoint to
x* (MLI). Nothing of d numbers is held but the model: every vector quantity is summed
tensor by tensor from checkpoints read lazily (``sketch_dim``: from CountSketches of
each checkpoint, read once).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from trajreg import principle as P
from trajreg.checkpoints.series import Checkpoint, CheckpointState, open_state
from trajreg.checkpoints.target import Target, parameter_names
from trajreg.errors import ConfigError, UserError
from trajreg.record.geometry import interpolate
from trajreg.run.analysis import speed_summary
from trajreg.run.progress import phase
from trajreg.run.summary import Summary, trained

__all__ = ["CheckpointOptions", "SeriesMeasurement", "measure_series", "summarize_series"]

REFERENCES = ("final", "best")
IDENTITY_RTOL = 1e-9  # float64 sums of float32 entries: far above rounding, far below a fault
MLI_POINTS = 21


@dataclass(frozen=True)
class CheckpointOptions:
    """How a checkpoint series is measured (``trajreg checkpoints`` options; a study
    block's ``measure`` section)."""

    reference: str = "final"  # final: x* is the last checkpoint; best: the lowest F
    eps: tuple[float, ...] = (0.0, 0.05)
    tau: float = 0.05  # the converging window, as analysis.tau
    max_fraction: float = 0.9
    loss_threshold: float = 0.1
    train_margin: float = 0.1
    sketch_dim: int | None = None  # CountSketch dimension; None: exact
    sketch_seed: int = 0
    buffers: bool = False  # floating-point buffers are part of x
    interval_points: int = 1  # F at this many points inside each interval (0: none)
    mli: bool = True  # F along the segment from the first checkpoint to x*
    device: str = "cpu"

    def __post_init__(self) -> None:
        ref = "final" if self.reference == "last" else self.reference
        object.__setattr__(self, "reference", ref)
        object.__setattr__(self, "eps", tuple(float(e) + 0.0 for e in self.eps))
        if ref not in REFERENCES:
            raise ConfigError(f"reference: must be final (or last) or best, got {ref!r}")
        if not self.eps or not all(0.0 <= e < 1.0 for e in self.eps):
            raise ConfigError(f"eps: must be numbers in [0, 1), got {list(self.eps)}")
        if not 0.0 < self.tau < 1.0:
            raise ConfigError(f"tau: must be in (0, 1), got {self.tau!r}")
        if not 0.0 < self.max_fraction <= 1.0:
            raise ConfigError(f"max_fraction: must be in (0, 1], got {self.max_fraction!r}")
        if self.sketch_dim is not None and (isinstance(self.sketch_dim, bool) or not isinstance(
                self.sketch_dim, int) or self.sketch_dim < 1):
            raise ConfigError(f"sketch_dim: must be a whole number >= 1, got "
                              f"{self.sketch_dim!r}")
        if isinstance(self.interval_points, bool) or not isinstance(
                self.interval_points, int) or self.interval_points < 0:
            raise ConfigError(f"interval_points: must be a whole number >= 0, got "
                              f"{self.interval_points!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device: must be cpu or cuda[:N], got {self.device!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "measure") -> CheckpointOptions:
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown option (allowed: "
                              f"{', '.join(sorted(names))})")
        try:
            return cls(**raw)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        except (TypeError, ValueError) as exc:  # eps: ["a"] fails in float()
            raise ConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["eps"] = list(self.eps)
        return out


@dataclass
class SeriesMeasurement:
    """What the pass over the checkpoints found (arrays of length K; interval arrays of
    length K - 1)."""

    checkpoints: list[Checkpoint]
    k_star: int
    F: np.ndarray
    D: np.ndarray
    a: np.ndarray
    s: np.ndarray
    dist_init: np.ndarray
    a_disp: np.ndarray
    s_disp: np.ndarray
    interval_loss: list[list[float]] = field(default_factory=list)  # F inside interval k
    mli: dict[str, Any] | None = None
    n_params: int = 0


# ---------------------------------------------------------------------- evaluation

def _named(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    return params, buffers


@torch.no_grad()
def _load(model: torch.nn.Module, names: Sequence[str], point: Callable[[str], torch.Tensor],
          buffer_of: Callable[[str], torch.Tensor | None]) -> None:
    """Copy the point's tensors into the model: every name of x, and each buffer the
    checkpoint has (the others keep the model's)."""
    params, buffers = _named(model)
    for name in names:
        target = params.get(name)
        if target is None:
            target = buffers[name]
        target.copy_(point(name).reshape(target.shape).to(target.dtype))
    for name, buf in buffers.items():
        if name in names:
            continue
        value = buffer_of(name)
        if value is not None:
            buf.copy_(value.reshape(buf.shape).to(buf.dtype))


def _evaluate(target: Target, grad: bool) -> float:
    """F at the loaded point: sum of the batch losses / denominator, in eval mode; with
    ``grad``, the gradient of F accumulated into ``p.grad``."""
    model = target.model
    model.eval()
    if grad:
        for p in model.parameters():
            p.grad = None
    total = 0.0
    for batch in target.batches:
        with torch.set_grad_enabled(grad):
            loss = target.loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise UserError(f"loss_fn(model, batch) must return a scalar tensor, got "
                            f"{type(loss).__name__}"
                            + (f" of shape {tuple(loss.shape)}" if isinstance(
                                loss, torch.Tensor) else ""))
        total += float(loss.detach().item())
        if grad:
            if not loss.requires_grad:
                raise UserError("loss_fn(model, batch) returned a loss with no gradient "
                                "(computed under no_grad, or from detached tensors)")
            (loss / target.denominator).backward()
    return total / target.denominator


# ---------------------------------------------------------------------- the pass

class _Points:
    """The series' checkpoints, opened on demand, and how a point (a checkpoint, or the
    segment between two) reads a tensor of x or a buffer.

    At most ``OPEN`` checkpoints are open at once (the first and x* stay; the others in
    the order used): a memory-mapped checkpoint keeps the pages it was read from mapped
    into the process while it is open, so holding every one would grow with the series.
    """

    OPEN = 4  # x_0, x*, x_k, x_{k+1}

    def __init__(self, checkpoints: list[Checkpoint], names: list[str],
                 prefixes: list[str]) -> None:
        self.checkpoints, self.names, self.prefixes = checkpoints, names, prefixes
        self.keep: set[int] = {0}
        self._open: dict[int, CheckpointState] = {}

    def state(self, k: int) -> CheckpointState:
        state = self._open.pop(k, None)
        if state is None:
            state = open_state(self.checkpoints[k])
            state.prefix = self.prefixes[k]
        self._open[k] = state  # most recently used last
        for other in list(self._open):
            if len(self._open) <= self.OPEN:
                break
            if other not in self.keep and other != k:
                del self._open[other]
        return state

    def load(self, model: torch.nn.Module, k: int) -> None:
        state = self.state(k)
        _load(model, self.names, state.tensor,
              lambda n: state.tensor(n) if state.has(n) else None)

    def load_between(self, model: torch.nn.Module, i: int, j: int, alpha: float) -> None:
        a, b = self.state(i), self.state(j)

        def buffer(name: str) -> torch.Tensor | None:
            if not (a.has(name) and b.has(name)):
                return b.tensor(name) if b.has(name) else None
            end = b.tensor(name)
            if not end.is_floating_point():  # num_batches_tracked: the end's
                return end
            return interpolate(alpha, a.tensor(name), end)

        _load(model, self.names, lambda n: interpolate(alpha, a.tensor(n), b.tensor(n)),
              buffer)


def _check_series(checkpoints: list[Checkpoint], model: torch.nn.Module,
                  names: list[str]) -> tuple[int, list[str]]:
    """Open every checkpoint once, before anything is measured: each must be readable
    and hold every name of x with the model's shape. d and each checkpoint's prefix."""
    params, buffers = _named(model)
    shapes = {n: tuple((params[n] if n in params else buffers[n]).shape) for n in names}
    prefixes = []
    for ck in checkpoints:
        state = open_state(ck)
        state.resolve(names)
        prefixes.append(state.prefix)
        for name in names:
            got = state.shape(name)
            if got != shapes[name]:
                raise UserError(f"{state.path}: {name} has shape {got} in the checkpoint, "
                                f"{shapes[name]} in the model")
    return sum(math.prod(s) for s in shapes.values()), prefixes


def _grad64(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A gradient flat in float64 on the CPU; zeros (shaped ``like``) for a tensor of x
    with none (a buffer, a parameter the loss does not use)."""
    return torch.zeros_like(like) if g is None else g.detach().to("cpu", torch.float64).reshape(-1)


def _grads(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor | None]:
    params = dict(model.named_parameters())
    return {n: (params[n].grad if n in params else None) for n in names}


def measure_series(checkpoints: list[Checkpoint], target: Target, options: CheckpointOptions,
                   progress: bool | None = None) -> SeriesMeasurement:
    """One pass over the series (two for ``reference: best`` without a sketch: F first,
    to find x*); see the module's docstring for what is measured."""
    model = target.model.to(options.device)
    names = parameter_names(model, options.buffers)
    if not names:
        raise UserError("the model has no trainable parameters")
    d, prefixes = _check_series(checkpoints, model, names)
    points = _Points(checkpoints, names, prefixes)
    K = len(checkpoints)
    F = np.full(K, np.nan)
    say = (lambda msg: phase(msg, progress)) if progress is not False else (lambda msg: None)

    if options.sketch_dim is not None:
        return _measure_sketched(checkpoints, target, options, points, d, say)

    if options.reference == "best":
        say(f"evaluating F at {K} checkpoints (to find the best)")
        for k in range(K):
            points.load(model, k)
            with torch.no_grad():
                F[k] = _evaluate(target, grad=False)
    k_star = _reference(F, options.reference)
    points.keep.add(k_star)
    D, a, s, dist0 = (np.zeros(K) for _ in range(4))
    a_disp, s_disp = np.zeros(K - 1), np.zeros(K - 1)
    say(f"measuring {K} checkpoints ({d} parameters)")
    for k in range(K):
        points.load(model, k)
        value = _evaluate(target, grad=True)
        if options.reference == "best" and not _same(value, F[k]):
            warnings.warn(f"F at {checkpoints[k].path} was {F[k]!r}, then {value!r}: the "
                          "evaluation is not deterministic (a loss_fn in training mode?)",
                          RuntimeWarning, stacklevel=2)
        F[k] = value
        grads = _grads(model, names)
        here, star, first = points.state(k), points.state(k_star), points.state(0)
        nxt = points.state(k + 1) if k + 1 < K else None
        for name in names:
            xk = here.float64(name)
            diff = xk - star.float64(name)
            g64 = _grad64(grads[name], xk)
            D[k] += float(diff @ diff)
            a[k] += float(diff @ g64)
            s[k] += float(g64 @ g64)
            init = xk - first.float64(name)
            dist0[k] += float(init @ init)
            if nxt is not None:
                u = xk - nxt.float64(name)
                a_disp[k] += float(diff @ u)
                s_disp[k] += float(u @ u)
    for p in model.parameters():
        p.grad = None
    out = SeriesMeasurement(checkpoints, k_star, F, D, a, s, np.sqrt(dist0), a_disp, s_disp,
                            n_params=d)
    _interpolations(out, target, options, points, F, say)
    return out


def _same(x: float, y: float) -> bool:
    return x == y or (math.isnan(x) and math.isnan(y))


def _reference(F: np.ndarray, reference: str) -> int:
    if reference == "final":
        return len(F) - 1
    finite = np.flatnonzero(np.isfinite(F))
    if finite.size == 0:
        raise UserError("F is not finite at any checkpoint: no best checkpoint")
    return int(finite[np.argmin(F[finite])])


def _interpolations(out: SeriesMeasurement, target: Target, options: CheckpointOptions,
                    points: _Points, F: np.ndarray, say: Callable[[str], None]) -> None:
    """F inside each interval, and along the first checkpoint -> x* (MLI); the ends are
    the checkpoints' own F (the same state, so the same value)."""
    model, K, m = target.model, len(F), options.interval_points
    if m:
        say(f"interpolating {K - 1} intervals ({m} point{'s' if m > 1 else ''} each)")
        for k in range(K - 1):
            inside = []
            for j in range(1, m + 1):
                points.load_between(model, k, k + 1, j / (m + 1))
                with torch.no_grad():
                    inside.append(_evaluate(target, grad=False))
            out.interval_loss.append(inside)
    if options.mli and out.k_star > 0:
        say(f"interpolating from the first checkpoint to x* ({MLI_POINTS} points)")
        alphas = P.mli_alphas(MLI_POINTS)
        losses = []
        for alpha in alphas:
            if alpha == 0.0:
                losses.append(float(F[0]))
                continue
            if alpha == 1.0:
                losses.append(float(F[out.k_star]))
                continue
            points.load_between(model, 0, out.k_star, float(alpha))
            with torch.no_grad():
                losses.append(_evaluate(target, grad=False))
        summary = P.mli_summary(alphas, np.asarray(losses))
        out.mli = {"alpha": alphas.tolist(), "loss": losses,
                   "monotone": bool(summary.monotone), "max_bump": summary.max_bump}


def _measure_sketched(checkpoints: list[Checkpoint], target: Target,
                      options: CheckpointOptions, points: _Points, d: int,
                      say: Callable[[str], None]) -> SeriesMeasurement:
    """The pass with CountSketches: each checkpoint's x and gradient sketched once (k
    numbers each), every inner product of vectors read from the sketches (s_k, the
    gradient's squared norm, is exact)."""
    from trajreg.record.modes.sketch import TorchCountSketch

    assert options.sketch_dim is not None
    model, K, k_dim = target.model, len(checkpoints), options.sketch_dim
    sketch = TorchCountSketch(d, k_dim, options.sketch_seed)
    xs, gs = np.zeros((K, k_dim)), np.zeros((K, k_dim))
    F, s = np.full(K, np.nan), np.zeros(K)
    say(f"measuring {K} checkpoints ({d} parameters, sketched to {k_dim})")
    for k in range(K):
        points.load(model, k)
        F[k] = _evaluate(target, grad=True)
        grads = _grads(model, points.names)
        here = points.state(k)
        x_acc, g_acc = sketch.accumulator("cpu"), sketch.accumulator("cpu")
        pos = 0
        for name in points.names:
            xk = here.float64(name)
            g64 = _grad64(grads[name], xk)
            index = sketch.chunk_index(pos, torch.empty(len(xk), dtype=torch.int64))
            sketch.add(x_acc, index, xk)
            sketch.add(g_acc, index, g64)
            s[k] += float(g64 @ g64)
            pos += len(xk)
        xs[k] = sketch.finish(x_acc, torch.empty(k_dim, dtype=torch.float64)).numpy()
        gs[k] = sketch.finish(g_acc, torch.empty(k_dim, dtype=torch.float64)).numpy()
    for p in model.parameters():
        p.grad = None
    k_star = _reference(F, options.reference)
    diff = xs - xs[k_star]
    u = xs[:-1] - xs[1:]
    init = xs - xs[0]
    out = SeriesMeasurement(
        checkpoints, k_star, F, D=np.einsum("ij,ij->i", diff, diff),
        a=np.einsum("ij,ij->i", diff, gs), s=s,
        dist_init=np.sqrt(np.einsum("ij,ij->i", init, init)),
        a_disp=np.einsum("ij,ij->i", diff[:-1], u), s_disp=np.einsum("ij,ij->i", u, u),
        n_params=d)
    _interpolations(out, target, options, points, F, say)
    return out


# ---------------------------------------------------------------------- the analysis

def _key(eps: float) -> str:
    return str(float(eps))


def series_table(m: SeriesMeasurement) -> pd.DataFrame:
    """metrics.parquet of a checkpoint series: one row per checkpoint; the interval
    columns (``a_disp``, ``s_disp``, ``cos_disp``, ``r_disp``, ``interval_max_bump``) on
    the row of the interval's first checkpoint (nan on the last row)."""
    K = len(m.F)
    f_star = float(m.F[m.k_star])
    b = m.F - f_star

    def padded(values: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(values, dtype=np.float64), [np.nan]])

    a_disp, s_disp = padded(m.a_disp), padded(m.s_disp)
    bump = np.full(K, np.nan)
    for k, inside in enumerate(m.interval_loss):
        curve = np.asarray([m.F[k], *inside, m.F[k + 1]])
        if np.all(np.isfinite(curve)):
            bump[k] = P.mli_summary(np.linspace(0.0, 1.0, len(curve)), curve).max_bump
    return pd.DataFrame({
        "step": [ck.step for ck in m.checkpoints],
        "F": m.F, "loss": m.F, "D": m.D, "a": m.a, "b": b, "s": m.s,
        "r": P.ratio(m.a, b, m.s, 0.0),
        "cos": P.cosine(m.a, m.D, m.s),
        "dist_init": m.dist_init,
        "a_disp": a_disp, "s_disp": s_disp,
        "cos_disp": P.cosine(a_disp, m.D, s_disp),
        "r_disp": P.ratio(a_disp, b, s_disp, 0.5),
        "interval_max_bump": bump,
        "path": [str(ck.path) for ck in m.checkpoints],
    })


def summarize_series(m: SeriesMeasurement, table: pd.DataFrame, options: CheckpointOptions,
                     target: Target, sources: dict[str, Any]) -> Summary:
    """summary.json of a checkpoint series (``Summary``, with ``checkpoints`` holding what
    only a series has)."""
    steps = [ck.step for ck in m.checkpoints]
    K, k_star = len(steps), m.k_star
    F = [float(v) for v in m.F]
    f_star = F[k_star]
    finite = np.isfinite(m.F)
    diverged = not bool(finite.all())
    diverged_step = steps[int(np.flatnonzero(~finite)[0])] if diverged else None
    # the window of checkpoints: each interval an "epoch" of one step
    start, end = P.converging_window(F, list(range(1, K)), f_star, options.tau,
                                     options.max_fraction)
    w = np.zeros(K, dtype=bool)
    w[start:end] = True
    w[k_star] = False
    a, b, s = (table[c].to_numpy() for c in ("a", "b", "s"))
    gamma = {_key(e): P.gamma_hat(a[w], b[w], s[w], 0.0, e) for e in options.eps}
    wi = w[:-1].copy()  # intervals k -> k+1 with k in the window
    a_d, s_d = m.a_disp, m.s_disp
    gamma_disp = {_key(e): P.gamma_hat(a_d[wi], b[:-1][wi], s_d[wi], 0.5, e)
                  for e in options.eps}
    g0 = gamma_disp.get("0.0", P.gamma_hat(a_d[wi], b[:-1][wi], s_d[wi], 0.5, 0.0))
    idx = np.flatnonzero(wi)
    bound = None
    if idx.size and np.all(np.diff(idx) == 1) and idx[0] == 0:
        check = P.convergence_bound(b[:-1][wi], np.ones(idx.size), float(m.D[0]), g0)
        bound = {"gamma": check.gamma, "lhs": check.lhs, "rhs": check.rhs,
                 "holds": check.holds, "form": "displacement, one step per interval"}
    residual = (m.D[:-1] - m.D[1:]) - (2 * a_d - s_d)
    scale = max(float(np.nanmax(np.abs(m.D))), float(np.nanmax(np.abs(s_d))), 1e-300)
    worst = float(np.nanmax(np.abs(residual))) / scale if residual.size else 0.0
    if not worst <= IDENTITY_RTOL:
        warnings.warn(f"the exact identity D_k - D_(k+1) = 2 a_disp_k - s_disp_k fails by "
                      f"{worst:.3g} of max D (tolerance {IDENTITY_RTOL:g}): a checkpoint "
                      "changed while it was read, or a bug; do not trust this measurement",
                      RuntimeWarning, stacklevel=2)
    speed = speed_summary(F, steps[1:], options.loss_threshold)
    if speed["steps_to_threshold"] == 0:
        speed["steps_to_threshold"] = steps[0]  # the first checkpoint is already below
    path_ratio = (P.path_ratio(np.sqrt(s_d[:k_star]), math.sqrt(float(m.D[0])))
                  if k_star > 0 else math.nan)
    facts = {
        "n_checkpoints": K,
        "steps": steps,
        "paths": [str(ck.path) for ck in m.checkpoints],
        "step_from": sorted({ck.step_from for ck in m.checkpoints}),
        "kind": sorted({ck.kind for ck in m.checkpoints}),
        "reference_index": k_star,
        "window_rows": [int(start), int(end)],
        "gamma_hat_disp": gamma_disp,
        "star_convex_fraction_disp": P.star_convex_fraction(a_d[wi], b[:-1][wi]),
        "identity_residual": worst,
        "interval_points": options.interval_points,
        "interval_loss": m.interval_loss,
        "evaluation": {"batches": len(target.batches), "denominator": target.denominator,
                       "mode": "eval"},
        "sketch_dim": options.sketch_dim,
        "buffers_in_x": options.buffers,
        **sources,
    }
    return Summary(
        n_steps=steps[-1], **speed, task=target.task, evaluation={"F_final": F[-1]},
        record_mode="checkpoints", reference=options.reference, n_params=m.n_params,
        diverged=diverged, diverged_step=diverged_step,
        trained=trained(F, diverged, options.train_margin),
        reference_step=steps[k_star], window=[int(start), int(end)], gamma_hat=gamma,
        gamma_bar=P.gamma_bar(a[w], b[w], s[w], 0.0),
        rp_fraction={key: P.fraction_obeying(a[w], b[w], s[w], 0.0, g)
                     for key, g in gamma.items()},
        star_convex_fraction=P.star_convex_fraction(a[w], b[w]),
        r_quantiles=P.r_quantiles(a[w], b[w], s[w], 0.0),
        bound=bound, f_star=f_star,
        options={"eps": list(options.eps), "tau": options.tau,
                 "max_fraction": options.max_fraction, "delta": 0.0,
                 "window": "converging phase (checkpoint rows)"},
        cos_v_positive=P.fraction_positive(table["cos_disp"].to_numpy()[:-1][wi]),
        path_ratio=path_ratio, mli=m.mli, source="checkpoints", checkpoints=facts)
