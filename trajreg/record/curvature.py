"""Curvature along the path (``record.curvature``, docs/principle.md section 15).

During training, at a seeded sample of steps (``CurvatureRows``, driven by the
recorder's step hooks), the rows the measurement needs are kept: x_t, the update
u_t = x_t - x_{t+1} and, for Adam-family optimizers, the preconditioner
P_t = sqrt(v_hat_t) + eps of their second-moment estimate, in
``trajectory/curvature/step-NNNNNNNN.npz`` (the recorder's flat order; a rank's shard
under FSDP2). After training, the context that rebuilds step t's loss (the same
minibatch, model mode and random state as b_t) measures at x_t (``measure_step``):

- ``lambda_max``: the top eigenvalue of H_t by Lanczos on Hessian-vector products
  (double backward), ``iterations`` at most, stopped when the residual bound of the top
  Ritz pair is at most ``tol`` of it;
- ``curv_update``: u_t^T H_t u_t / ||u_t||^2, one product;
- ``critical_sharpness``: 2 / alpha*, alpha* the smallest step along -v_t (v_t =
  u_t / eta_t) at which l_t rises above l_t(x_t), from a few forward passes;
- ``lambda_max_precond``: the top eigenvalue of P_t^-1 H_t (Lanczos on
  P^-1/2 H P^-1/2), Adam family only.

Every vector is a list of tensors shaped as the parameters, and every inner product
goes through ``reduce`` (the sum over ranks of a sharded vector; the identity on one
process), so no rank holds more than its parameters.

Under DDP (``measure_rows`` with the run's ``Ranks``) every rank holds the whole x and
its part of each minibatch: rank 0 keeps the rows and hands each to the other ranks, every
rank differentiates its part of l_t, and each Hessian-vector product and loss is averaged
over the ranks (float64 all_reduce), so H is the Hessian of the global minibatch's loss
(the mean of the ranks' equal parts). On one process the same code runs with
``ONE_PROCESS``, whose collectives return this process's values.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trajreg.atomic import replace_atomic
from trajreg.principle.curvature import adam_threshold, critical_step, eos_threshold, lanczos
from trajreg.principle.sketch import hash32


class RankGroup(Protocol):
    """What the measurement asks of a run's ranks (``trajreg.distributed.ranks.Ranks``
    has it; ``ONE_PROCESS`` is one process's)."""

    world: int

    @property
    def leader(self) -> bool: ...

    def allsum(self, what: str, values: np.ndarray) -> np.ndarray: ...

    def broadcast_object(self, what: str, obj: Any = None) -> Any: ...


class _OneProcess:
    """The rank group of one process: every collective returns this process's values."""

    world = 1
    leader = True

    def allsum(self, what: str, values: np.ndarray) -> np.ndarray:
        return values

    def broadcast_object(self, what: str, obj: Any = None) -> Any:
        return obj


ONE_PROCESS: RankGroup = _OneProcess()

__all__ = ["COLUMNS", "CurvatureContext", "CurvatureRows", "CurvatureStep", "columns",
           "curvature_steps", "data_parallel", "measure_rows", "measure_step", "read_rows"]

DIRECTORY = "curvature"
COLUMNS = ("lambda_max", "lambda_max_iterations", "lambda_max_converged", "curv_update",
           "critical_sharpness", "lambda_max_precond", "eos_threshold")
_STREAM = 9  # the hash stream of the curvature sample (the sketch uses 0-2)
BLOCK_STEPS = 4096  # steps hashed at once by the recorder's draw
ADAM_FAMILY = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax")


def sampled_mask(start: int, n: int, rate: float, seed: int) -> np.ndarray:
    """Whether each of the steps start .. start + n - 1 is in the curvature sample: a hash
    of (seed, step) below ``rate`` (the same steps whatever else the run does)."""
    if rate >= 1.0:
        return np.ones(n, dtype=bool)
    h = hash32(np.arange(start, start + n, dtype=np.int64), seed, _STREAM)
    return h < rate * 2.0**32


def sampled(step: int, rate: float, seed: int) -> bool:
    """Whether step ``step`` is in the curvature sample (``sampled_mask``)."""
    return bool(sampled_mask(step, 1, rate, seed)[0])


def curvature_steps(T: int, rate: float, seed: int) -> list[int]:
    """The sampled steps of a run of T steps."""
    return np.flatnonzero(sampled_mask(0, T, rate, seed)).tolist()


def optimizer_facts(optimizer: torch.optim.Optimizer, group: int = 0) -> dict[str, Any]:
    """What the edge of stability depends on: the optimizer's class and its momentum
    (heavy ball) or betas (Adam family)."""
    g = optimizer.param_groups[group]
    facts: dict[str, Any] = {"optimizer": type(optimizer).__name__}
    if "betas" in g:
        facts["beta1"], facts["beta2"] = float(g["betas"][0]), float(g["betas"][1])
        facts["eps"] = float(g.get("eps", 1e-8))
    facts["momentum"] = float(g.get("momentum", 0.0) or 0.0)
    return facts


def _preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                    local: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """sqrt(v_hat) + eps of an Adam-family optimizer after its step (bias-corrected
    exp_avg_sq), flat in the recorder's order; None for other optimizers and before any
    state. A parameter without state (no gradient yet: a model's unused head, whose rows
    of H are zero) has v = 0, as Adam starts it."""
    if type(optimizer).__name__ not in ADAM_FAMILY:
        return None
    parts = []
    found = False
    for p in params:
        state = optimizer.state.get(p, {})
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        beta2, eps = float(group["betas"][1]), float(group.get("eps", 1e-8))
        if "exp_avg_sq" not in state:
            parts.append(torch.full((local(p).numel(),), eps, dtype=torch.float64,
                                    device=local(p).device))
            continue
        found = True
        step = float(state["step"]) if "step" in state else 1.0
        v = local(state["exp_avg_sq"]).detach().to(torch.float64).reshape(-1)
        parts.append((v / (1.0 - beta2**step)).sqrt() + eps)
    return torch.cat(parts) if found else None


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2), any other tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class CurvatureRows:
    """Keeps x_t, u_t and the preconditioner of each sampled step (the recorder calls
    ``pre_step`` and ``post_step``). ``keep``: the record mode's own sample (a step the
    mode does not measure has no row in metrics.parquet to put curvature in)."""

    def __init__(self, directory: Path, rate: float, seed: int,
                 keep: Callable[[int], bool] | None = None) -> None:
        self.directory = Path(directory) / DIRECTORY
        self.rate, self.seed, self.keep = float(rate), int(seed), keep
        self._x: torch.Tensor | None = None
        self._block_start, self._block = 0, np.zeros(0, dtype=bool)
        self._lr = math.nan
        self.kept: list[int] = []

    def wanted(self, step: int) -> bool:
        # asked at every optimizer step: hashed a block of steps at a time (one step's
        # hash alone cost 15 us, more than the rest of a small model's recording)
        at = step - self._block_start
        if not 0 <= at < len(self._block):
            self._block_start, at = step, 0
            self._block = sampled_mask(step, BLOCK_STEPS, self.rate, self.seed)
        return bool(self._block[at]) and (self.keep is None or self.keep(step))

    def pre_step(self, rec: Any, step: int, lr: float) -> None:
        if self.wanted(step):
            self._x = rec.flat().detach().to("cpu", torch.float64, copy=True)
            self._lr = lr

    def post_step(self, rec: Any, step: int) -> None:
        if self._x is None:
            return
        x, self._x = self._x, None
        u = x - rec.flat().detach().to("cpu", torch.float64)
        precond = _preconditioner(rec.optimizer, rec.params, _local)
        arrays = {"x": x.numpy().astype(np.float32 if rec.dtype != torch.float64 else np.float64),
                  "u": u.numpy()}
        if precond is not None:
            arrays["precond"] = precond.cpu().numpy()
        meta = {"step": step, "lr": self._lr, **optimizer_facts(rec.optimizer, rec.lr_group)}
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step-{step:08d}.npz"
        replace_atomic(path, lambda tmp: _savez(tmp, arrays, meta))
        self.kept.append(step)


def _savez(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)  # type: ignore[arg-type]


@dataclass
class CurvatureRow:
    step: int
    lr: float
    x: np.ndarray
    u: np.ndarray
    precond: np.ndarray | None
    facts: dict[str, Any]


def row_paths(directory: Path) -> list[Path]:
    """The files of the kept rows of a run's ``trajectory/`` (or a rank's part), by step."""
    folder = Path(directory) / DIRECTORY
    return sorted(folder.glob("step-*.npz")) if folder.is_dir() else []


def row_step(path: Path) -> int:
    """The step of a row file (``step-NNNNNNNN.npz``), without reading it."""
    return int(path.stem.split("-")[1])


def read_row(path: Path) -> CurvatureRow:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        return CurvatureRow(int(meta["step"]), float(meta["lr"]), z["x"], z["u"],
                            z["precond"] if "precond" in z else None, meta)


def read_rows(directory: Path) -> list[CurvatureRow]:
    """The kept rows of a run's ``trajectory/`` (or a rank's part), by step."""
    return [read_row(path) for path in row_paths(directory)]


# ---------------------------------------------------------------------- measuring

Vec = list[torch.Tensor]


@dataclass(frozen=True)
class CurvatureStep:
    """The curvature of one sampled step (nan where not measured)."""

    lambda_max: float
    iterations: int
    converged: bool
    curv_update: float
    critical_sharpness: float
    lambda_max_precond: float
    eos_threshold: float


def _split(flat: np.ndarray, like: Sequence[torch.Tensor]) -> Vec:
    out, at = [], 0
    t = torch.from_numpy(np.asarray(flat, dtype=np.float64))
    for p in like:
        n = p.numel()
        out.append(t[at : at + n].view(p.shape).to(p.device, p.dtype))
        at += n
    return out


def twice_differentiable_attention() -> contextlib.AbstractContextManager:
    """``F.scaled_dot_product_attention`` through its math kernel inside the block. The
    fused kernels (flash and memory-efficient; on the CPU the flash kernel whenever the
    attention has no dropout) have no double backward, so a Hessian-vector product
    through them raises. The math kernel computes the same function, rounded
    differently; with attention dropout on an accelerator its masks are not the fused
    kernel's (on the CPU attention dropout runs the math kernel in training too). Every
    forward pass of a measurement runs in it, so the critical step compares losses of
    one kernel. torch < 2.3 has no such switch: unchanged."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch 2.2
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def measure_step(params: Sequence[torch.Tensor], loss_fn: Callable[[], torch.Tensor],
                 row: CurvatureRow, *, iterations: int, tol: float, seed: int,
                 critical: bool = True,
                 reduce: Callable[[float], float] = lambda v: v,
                 average: Callable[[float], float] = lambda v: v,
                 average_vector: Callable[[Vec], Vec] = lambda v: v) -> CurvatureStep:
    """The curvature of step ``row.step`` at the loaded point x_t (``params`` hold it,
    in the recorder's order). ``loss_fn()`` is l_t there, with a graph (under DDP the
    rank's part of the minibatch). ``reduce`` sums a scalar over ranks whose vectors are
    shards (FSDP2); ``average`` and ``average_vector`` average a loss and a
    Hessian-vector product over ranks that each hold a part of the minibatch (DDP). One
    process: all three the identity. Attention runs its math kernel
    (``twice_differentiable_attention``)."""
    with twice_differentiable_attention():
        return _measure_step(list(params), loss_fn, row, iterations=iterations, tol=tol,
                             seed=seed, critical=critical, reduce=reduce, average=average,
                             average_vector=average_vector)


def _measure_step(params: Vec, loss_fn: Callable[[], torch.Tensor], row: CurvatureRow, *,
                  iterations: int, tol: float, seed: int, critical: bool,
                  reduce: Callable[[float], float], average: Callable[[float], float],
                  average_vector: Callable[[Vec], Vec]) -> CurvatureStep:
    loss = loss_fn()
    # a parameter the loss does not use (a pretrained model's unused head) has no
    # gradient, and one whose gradient is constant (a bias feeding a linear loss) has a
    # gradient without a graph: both have zero rows in H
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    curved = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not curved:  # H = 0 would be claimed for what is a loss without a second derivative
        raise RuntimeError("the gradient of the step's loss has no graph: the loss cannot "
                           "be differentiated twice (computed without autograd, or through "
                           "a function whose backward is not differentiable)")

    def hvp(v: Vec) -> Vec:
        out = torch.autograd.grad([grads[i] for i in curved], params,
                                  grad_outputs=[v[i] for i in curved], retain_graph=True,
                                  allow_unused=True)
        return average_vector([torch.zeros_like(p) if o is None else o.detach()
                               for p, o in zip(params, out, strict=True)])

    def dot(a: Vec, b: Vec) -> float:
        return reduce(float(sum((x.double() * y.double()).sum() for x, y in
                                zip(a, b, strict=True))))

    def axpby(a: float, x: Vec, b: float, y: Vec) -> Vec:
        return [a * xi + b * yi for xi, yi in zip(x, y, strict=True)]

    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + row.step)
    start = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
             for p in params]
    top = lanczos(hvp, start, dot=dot, axpby=axpby, iterations=iterations, tol=tol)
    u = _split(row.u, params)
    uu = dot(u, u)
    curv = dot(u, hvp(u)) / uu if uu > 0 else math.nan
    precond = math.nan
    if row.precond is not None:
        inv_sqrt = [1.0 / torch.sqrt(p) for p in _split(row.precond, params)]

        def scaled(v: Vec) -> Vec:  # P^-1/2 H P^-1/2: symmetric, the spectrum of P^-1 H
            return [s * h for s, h in zip(inv_sqrt, hvp([s * w for s, w in
                                                          zip(inv_sqrt, v, strict=True)]),
                                          strict=True)]

        precond = lanczos(scaled, start, dot=dot, axpby=axpby, iterations=iterations,
                          tol=tol).value
    sharp = math.nan
    if critical and uu > 0 and row.lr > 0:
        sharp = _critical(params, loss_fn, average(float(loss.detach())), u, row.lr, average)
    facts = row.facts
    if facts.get("optimizer") in ADAM_FAMILY:
        eos = float(adam_threshold(row.lr, float(facts.get("beta1", 0.9))))
    else:
        eos = float(eos_threshold(row.lr, float(facts.get("momentum", 0.0))))
    return CurvatureStep(top.value, top.iterations, top.converged, curv, sharp, precond, eos)


@torch.no_grad()
def _critical(params: Vec, loss_fn: Callable[[], torch.Tensor], base: float, u: Vec,
              lr: float, average: Callable[[float], float]) -> float:
    """2 / alpha*, alpha* the smallest step along -v_t = -u_t / eta_t at which l_t rises
    (``principle.critical_step`` from alpha = eta_t, the step taken); the parameters
    are restored after."""
    saved = [p.detach().clone() for p in params]

    def loss_at(alpha: float) -> float:
        for p, x, d in zip(params, saved, u, strict=True):
            p.copy_(x - (alpha / lr) * d)
        return average(float(loss_fn().detach()))

    try:
        step = critical_step(loss_at, base, lr)
    finally:
        for p, x in zip(params, saved, strict=True):
            p.copy_(x)
    return step.sharpness


# ---------------------------------------------------------------------- a run's sample

class CurvatureContext(Protocol):
    """What the measurement asks of the code that trained the run (a ``MeasureContext``
    that also rebuilds a step's loss with a graph): ``load(x)`` puts a flat vector into
    the evaluation model, ``curvature_parameters()`` are its parameters in the flat
    order, ``step_loss(t)`` is l_t at them with step t's minibatch, model mode and random
    state (batch norm's running statistics untouched)."""

    def load(self, x: np.ndarray) -> None: ...

    def curvature_parameters(self) -> list[torch.Tensor]: ...

    def step_loss(self, t: int) -> torch.Tensor: ...


def data_parallel(ranks: RankGroup) -> dict[str, Any]:
    """``measure_step``'s ``average`` and ``average_vector`` over ranks that each hold an
    equal part of every minibatch (DDP): the mean of the ranks' values, added in float64
    (one process: its own values, unchanged)."""
    world = ranks.world

    def average(value: float) -> float:
        return float(ranks.allsum("averaging a loss over the ranks",
                                  np.asarray([value]))[0]) / world

    def average_vector(v: Vec) -> Vec:
        flat = torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in v])
        total = torch.from_numpy(ranks.allsum("averaging a Hessian-vector product over "
                                              "the ranks", flat.numpy())) / world
        out, at = [], 0
        for t in v:
            out.append(total[at : at + t.numel()].view(t.shape).to(t.device, t.dtype))
            at += t.numel()
        return out

    return {"average": average, "average_vector": average_vector}


def measure_rows(ctx: CurvatureContext, directory: Path, options: Any, seed: int,
                 x_star: np.ndarray | None = None, last_step: int | None = None,
                 ranks: RankGroup = ONE_PROCESS,
                 steps: Callable[[int], bool] | None = None
                 ) -> tuple[dict[int, CurvatureStep], float]:
    """Every kept row of ``directory`` measured (``options``: ``record.curvature``), and
    lambda_max at ``x_star`` on step ``last_step``'s minibatch (nan without them).
    ``steps``: which rows' steps to measure (None: all; an integration's session leaves
    out the steps beyond x* and those without a loss of their own).

    ``ranks``: the ranks of a DDP run, every one calling this in lockstep with its own
    ``ctx`` (whose ``step_loss`` is its part of l_t) and the same ``x_star``: the leader
    reads the rows from ``directory`` and hands each to the others, and losses and
    Hessian-vector products are averaged over the ranks (``data_parallel``). Every rank
    gets the same results (the averages are identical on every rank, so every rank takes
    the same Lanczos and critical-step decisions). Default: one process."""
    reduction = data_parallel(ranks)
    out: dict[int, CurvatureStep] = {}
    paths = [p for p in row_paths(directory) if steps is None or steps(row_step(p))] \
        if ranks.leader else []
    n = ranks.broadcast_object("counting the curvature rows", len(paths))
    for i in range(n):
        row = ranks.broadcast_object("handing on a curvature row",
                                     read_row(paths[i]) if ranks.leader else None)
        ctx.load(row.x)
        out[row.step] = measure_step(
            ctx.curvature_parameters(), _loss_of(ctx, row.step), row,
            iterations=options.iterations, tol=options.tol, seed=seed,
            critical=options.critical, **reduction)
    at_star = math.nan
    if x_star is not None and last_step is not None:
        ctx.load(x_star)
        params = ctx.curvature_parameters()
        star_row = CurvatureRow(last_step, math.nan, x_star, np.zeros_like(x_star), None, {})
        at_star = measure_step(params, lambda: ctx.step_loss(last_step), star_row,
                               iterations=options.iterations, tol=options.tol, seed=seed,
                               critical=False, **reduction).lambda_max
    return out, at_star


def _loss_of(ctx: CurvatureContext, t: int) -> Callable[[], torch.Tensor]:
    return lambda: ctx.step_loss(t)


def columns(steps: np.ndarray, measured: dict[int, CurvatureStep]) -> dict[str, np.ndarray]:
    """metrics.parquet's curvature columns for the measured ``steps`` (nan where a step
    was not in the curvature sample)."""
    n = len(steps)
    out = {name: np.full(n, np.nan) for name in COLUMNS}
    for i, t in enumerate(np.asarray(steps).tolist()):
        c = measured.get(int(t))
        if c is None:
            continue
        out["lambda_max"][i] = c.lambda_max
        out["lambda_max_iterations"][i] = c.iterations
        out["lambda_max_converged"][i] = float(c.converged)
        out["curv_update"][i] = c.curv_update
        out["critical_sharpness"][i] = c.critical_sharpness
        out["lambda_max_precond"][i] = c.lambda_max_precond
        out["eos_threshold"][i] = c.eos_threshold
    return out
