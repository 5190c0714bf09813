"""What the record modes share to measure the trajectory's geometry (docs/principle.md,
section 14): the gradients g_t along it, the length of the path and the loss on the
segment from x_0 to x*.

- ``stream_gradient_quantities``: g_dot_t = <g_t, x_t - x*> and g_norm2_t = ||g_t||^2
  of stored rows, streamed in blocks (``principle.gradient_quantities``);
- ``SquaredNorms``: ||x_t - x_{t+1}||^2 (sample) or ||g_t||^2 (sketch) of every step,
  online in float64; ``StagedRows``: a sketch a step into a trajectory store;
- ``endpoint_summary``: the path ratio sum_t ||u_t|| / ||x_0 - x*|| and the monotonic
  linear interpolation of F from x_0 to x* (``MeasureContext.interpolated_losses``),
  the keys ``path_ratio`` and ``mli`` of summary.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trajreg import principle as P
from trajreg.record.measured import Measured
from trajreg.record.store import TrajectoryStore

if TYPE_CHECKING:
    from trajreg.record.modes.base import MeasureContext

GRADIENTS = "grad"  # store mode: trajectory/grad/, a trajectory store of g_0 .. g_{T-1}
MLI_POINTS = 21  # alphas of the interpolation (principle.mli_alphas)
_FLUSH = 4096  # step norms kept on the device before they are written


def block_rows(d: int) -> int:
    """Rows of a float64 block of about 8 MiB (at most 256), as store mode streams."""
    return max(1, min(256, (8 << 20) // (8 * max(1, d))))


def stream_gradient_quantities(xs: TrajectoryStore, grads: TrajectoryStore, T: int,
                               x_star: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """g_dot and g_norm2 of steps 0..T-1: row t of ``grads`` is the gradient at row t of
    ``xs`` (the iterates or their sketches, ``x_star`` of the same kind), read in
    blocks so memory stays O(d)."""
    if grads.rows < T or xs.rows < T:
        raise RuntimeError(f"the gradients hold {grads.rows} rows and the iterates "
                           f"{xs.rows}, the run took {T} steps")
    g_dot, g_norm2 = np.empty(T), np.empty(T)
    n = block_rows(xs.d)
    for t0 in range(0, T, n):
        t1 = min(T, t0 + n)
        q = P.gradient_quantities(xs.read(t0, t1), grads.read(t0, t1), x_star)
        g_dot[t0:t1], g_norm2[t0:t1] = q.g_dot, q.g_norm2
    return g_dot, g_norm2


class SquaredNorms:
    """Squared norms of one vector a step (``push(v)``: ||v||^2; ``push_next(x, lr)``:
    ||x_prev - x||^2 of consecutive iterates, the step norm s_u_t, or with ``lr``
    ||x_prev - x||^2 / lr^2, s_t), in float64 on the vectors' device (the difference is
    exact in float64 from float32 or float64 rows), written to ``path`` as raw float64,
    4096 at a time: O(d) memory, 8 bytes a step on disk. ``scratch``: a float64 vector of
    d entries to use as the difference's buffer (a caller's shared scratch), else one is
    made when first needed. ``push_value`` takes a norm the caller computed (mode sketch
    computes its norms in its own pass over the vectors)."""

    def __init__(self, path: Path, d: int, device: torch.device | str,
                 scratch: torch.Tensor | None = None) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.d, self.device = int(d), device
        # made on first use (``_diff``): a caller that pushes its own values
        # (``push_value``) needs no vector of d float64s
        self._scratch = scratch
        self._buf = torch.empty(_FLUSH, dtype=torch.float64, device=device)
        # 0-d views of the buffer, each made once, on first use (all 4096 up front took
        # 24 ms): torch.dot writes each norm into its slot (out=), where an indexed
        # assignment made a temporary and a copy every step
        self._slots: list[torch.Tensor] = []
        self._lrs: list[float] = []  # eta_t of each norm, divided out at the flush
        self._n = 0
        self._x64: list[torch.Tensor] = []  # push_next: x_t and x_{t+1} in float64, in turn
        self._next = 0  # push_next calls so far

    def push_next(self, x: torch.Tensor, lr: float | None = None) -> None:
        """The next iterate of a sequence: from the second call on, pushes
        ||x_prev - x||^2 (over ``lr``^2 when given: eta of the step from x_prev to x).
        x is kept as a float64 copy (exact), so
        the difference is a float64 - float64 subtraction: a float64 - float32 one takes
        torch's slow mixed-dtype path, the largest part of this on a small model."""
        if not self._x64:
            self._x64 = [torch.empty_like(self._diff), torch.empty_like(self._diff)]
        cur = self._x64[self._next % 2]
        cur.copy_(x)
        if self._next > 0:
            torch.sub(self._x64[(self._next - 1) % 2], cur, out=self._diff)
            self._append(lr)
        self._next += 1

    def push(self, v: torch.Tensor) -> None:
        self._diff.copy_(v)
        self._append(None)

    def push_value(self, value: torch.Tensor, lr: float | None = None) -> None:
        """A squared norm the caller computed: a 0-d float64 tensor on the device
        (over ``lr``^2 when given, as ``push_next``)."""
        self._slot().copy_(value)
        self._advance(lr)

    @property
    def _diff(self) -> torch.Tensor:
        if self._scratch is None:
            self._scratch = torch.empty(self.d, dtype=torch.float64, device=self.device)
        return self._scratch

    def _slot(self) -> torch.Tensor:
        if self._n == len(self._slots):
            self._slots.append(self._buf[self._n])
        return self._slots[self._n]

    def _append(self, lr: float | None) -> None:
        torch.dot(self._diff, self._diff, out=self._slot())
        self._advance(lr)

    def _advance(self, lr: float | None) -> None:
        if lr is not None:
            self._lrs.append(lr)
        self._n += 1
        if self._n == _FLUSH:
            self._flush()

    def _flush(self) -> None:
        block = self._buf[: self._n].cpu().numpy()
        if self._lrs:  # ||u_t||^2 / (eta_t * eta_t): IEEE division, as torch divided before
            if len(self._lrs) != self._n:
                raise RuntimeError("SquaredNorms: some norms were pushed without a learning rate")
            lr = np.asarray(self._lrs, dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                block = block / (lr * lr)
            self._lrs = []
        self._file.write(block.tobytes())
        self._n = 0

    def close(self) -> None:
        if not self._file.closed:
            self._flush()
            self._file.close()


class StagedRows:
    """Rows of k numbers computed on the device (a sketch each step) for a
    ``TrajectoryWriter``: on the CPU each goes straight into the writer's buffer; on an
    accelerator (``staged``) they are gathered 64 at a time on the device and copied
    to the host together."""

    def __init__(self, writer: Any, k: int, dtype: torch.dtype, device: torch.device | str,
                 staged: bool) -> None:
        self.writer, self.staged = writer, staged
        self._rows = torch.empty((64 if staged else 1, k), dtype=dtype, device=device)
        self._lrs: list[float | None] = []

    def push(self, fill: Any, lr: float | None) -> None:
        """``fill(row)`` writes the row (a k-vector on the device or the host)."""
        if not self.staged:
            fill(torch.from_numpy(self.writer.next_row()))
            self.writer.commit_row(lr)
            return
        fill(self._rows[len(self._lrs)])
        self._lrs.append(lr)
        if len(self._lrs) == len(self._rows):
            self.flush()

    def flush(self) -> None:
        host = self._rows[: len(self._lrs)].cpu().numpy()
        for row, lr in zip(host, self._lrs, strict=True):
            self.writer.next_row()[:] = row
            self.writer.commit_row(lr)
        self._lrs = []

    def close(self) -> None:
        if self.staged:
            self.flush()
        self.writer.close()


def endpoint_summary(ctx: MeasureContext, k: int, x0: np.ndarray, x_star: np.ndarray,
                     step_norms: np.ndarray) -> dict[str, Any]:
    """``path_ratio`` = sum_{t < k} ||u_t|| / ||x_0 - x*|| (``step_norms`` are ||u_t|| of
    steps 0..k-1) and ``mli``: F at x_0 + alpha (x* - x_0) for the 21 alphas of
    ``principle.mli_alphas``, ``{"alpha", "loss", "monotone", "max_bump"}``, when the
    context evaluates it (``ctx.interpolated_losses``, when ``ctx.mli``)."""
    x0 = np.asarray(x0, dtype=np.float64)
    x_star = np.asarray(x_star, dtype=np.float64)
    diff = x0 - x_star
    out: dict[str, Any] = {"path_ratio": P.path_ratio(np.asarray(step_norms)[:k],
                                                      math.sqrt(float(diff @ diff)))}
    if ctx.mli:
        alphas = P.mli_alphas(MLI_POINTS)
        losses = np.asarray(ctx.interpolated_losses(alphas.tolist(), x0, x_star), dtype=np.float64)
        m = P.mli_summary(alphas, losses)
        out["mli"] = {"alpha": alphas.tolist(), "loss": losses.tolist(),
                      "monotone": bool(m.monotone), "max_bump": m.max_bump}
    return out


def measured_every_step(ctx: MeasureContext, k: int, *, D: np.ndarray, a: np.ndarray, s: np.ndarray,
                        lr: np.ndarray, columns: dict, x0: np.ndarray,
                        x_star: np.ndarray) -> Measured:
    """The ``Measured`` of a mode that has D, a, s of every step 0..T-1 against x* = x_k:
    loads x* into the context, adds l_t(x*) of every step and F(x*), and the endpoint
    summary (path ratio from ||u_t|| = eta_t sqrt(s_t), the interpolation)."""
    T = len(D)
    ctx.load(x_star)
    loss_star, f_star = ctx.step_losses(range(T)), ctx.f_star(k)
    return Measured(steps=np.arange(T), D=D, a=a, s=s, lr=lr, loss_star=loss_star,
                    f_star=f_star, reference_step=k, columns=columns,
                    summary=endpoint_summary(ctx, k, x0, x_star, lr * np.sqrt(s)))


def interpolate(alpha: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(1 - alpha) start + alpha end in float64, so both ends are exact (alpha 0: start,
    alpha 1: end, bit for bit once cast back to their precision)."""
    a = float(alpha)
    return (1.0 - a) * start.detach().to(torch.float64) + a * end.detach().to(torch.float64)
