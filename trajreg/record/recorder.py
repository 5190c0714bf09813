"""Record an optimization trajectory from any torch.optim optimizer with one line.

The recorder hooks the optimizer's step (``register_step_pre_hook`` /
``register_step_post_hook``), the way Cockpit and BackPACK instrument training, so
the user's loop is unchanged::

    recorder = Recorder(optimizer, "run/trajectory")   # the one added line
    ...train as usual...
    recorder.close()

x_t is the concatenation of every parameter the optimizer updates, in param-group
order, taken just before step t; u_t = x_t - x_{t+1}; eta_t is the learning rate of
param group ``lr_group`` (group 0 by default) at step t, so v_t = u_t / eta_t is
well defined with per-group learning rates and weight decay.

Modes:
    store   every x_t goes to preallocated memmaps on disk (memory O(d));
    replay  x* is known in advance; D_t, a_t, s_t are computed on the fly against it
            and nothing of size T*d is kept (memory O(d));
    off     no hooks at all (the baseline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trajreg.principle import step_quantities
from trajreg.record.store import TrajectoryWriter

MODES = ("store", "replay", "off")


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters an optimizer updates, in param-group order, without duplicates."""
    seen: set[int] = set()
    params = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def flat_params(params: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """x as one flat vector (written into ``out`` when given)."""
    flat = [p.detach().reshape(-1) for p in params]
    if out is None:
        return torch.cat(flat)
    return torch.cat([f.to(out.device) for f in flat], out=out)


def set_flat_params(params: list[torch.Tensor], x: np.ndarray | torch.Tensor) -> None:
    """The inverse of ``flat_params``: copy the flat vector ``x`` into ``params`` in place.

    (``torch.nn.utils.vector_to_parameters`` would make the parameters views of ``x``,
    which may be a memory-mapped row of a trajectory store.)
    """
    flat = (x.detach().reshape(-1) if isinstance(x, torch.Tensor)
            else torch.from_numpy(np.array(x, copy=True)))
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


class StepStream:
    """Streaming per-step quantities against a known x* (update/compute, like torchmetrics).

    ``update(x_t, x_next, lr)`` adds one step's D_t, a_t, s_t; ``compute()`` returns the
    arrays. Memory: O(d) for x*, plus three floats per step.
    """

    def __init__(self, x_star: np.ndarray | torch.Tensor) -> None:
        self.x_star = np.asarray(torch.as_tensor(x_star).detach().cpu(), dtype=np.float64)
        self.D: list[float] = []
        self.a: list[float] = []
        self.s: list[float] = []
        self.lr: list[float] = []

    def update(self, x: torch.Tensor, x_next: torch.Tensor, lr: float) -> None:
        D, a, s = step_quantities(x, x_next, self.x_star, lr)
        self.D.append(D)
        self.a.append(a)
        self.s.append(s)
        self.lr.append(lr)

    def compute(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k), dtype=np.float64)
                for k in ("D", "a", "s", "lr")}


class Recorder:
    """Hooks an optimizer's steps and records the trajectory (see module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, directory: str | Path | None = None,
                 *, mode: str = "store", x_star: np.ndarray | torch.Tensor | None = None,
                 capacity: int = 4096, lr_group: int = 0, sync_seconds: float = 5.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "store" and directory is None:
            raise ValueError("mode 'store' needs a directory to write the trajectory to")
        if mode == "replay" and x_star is None:
            raise ValueError("mode 'replay' needs x_star, the reference point")
        if not 0 <= lr_group < len(optimizer.param_groups):
            raise ValueError(f"lr_group: no param group {lr_group}")
        self.optimizer = optimizer
        self.mode = mode
        self.lr_group = lr_group
        self.params = optimizer_params(optimizer)
        self.d = sum(p.numel() for p in self.params)
        self.steps = 0
        self.writer: TrajectoryWriter | None = None
        self.stream: StepStream | None = None
        self._handles = []
        self._x_prev: torch.Tensor | None = None
        self._lr_prev = 0.0
        if mode == "off":
            return
        if mode == "store":
            dtype = {torch.float64: np.float64}.get(self.params[0].dtype, np.float32)
            self.writer = TrajectoryWriter(directory, self.d, dtype, capacity, sync_seconds)
        else:
            self.stream = StepStream(x_star)
            if self.stream.x_star.shape != (self.d,):
                raise ValueError(f"x_star has shape {self.stream.x_star.shape}, "
                                 f"the optimizer's parameters have {self.d} entries")
        self._handles = [optimizer.register_step_pre_hook(self._pre_step),
                         optimizer.register_step_post_hook(self._post_step)]

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[self.lr_group]["lr"])

    @torch.no_grad()  # autograd bookkeeping doubled the cost of the copy
    def _pre_step(self, optimizer, args, kwargs) -> None:
        lr = self._lr()
        if self.writer is not None:
            row = torch.from_numpy(self.writer.next_row())
            flat_params(self.params, out=row)
            self.writer.commit_row(lr)
        else:
            self._x_prev = flat_params(self.params).cpu()
            self._lr_prev = lr

    @torch.no_grad()
    def _post_step(self, optimizer, args, kwargs) -> None:
        if self.stream is not None:
            self.stream.update(self._x_prev, flat_params(self.params).cpu(), self._lr_prev)
            self._x_prev = None
        self.steps += 1

    def close(self) -> None:
        """Detach the hooks; in store mode write the final iterate x_T and seal the sidecar."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.writer is not None and not self.writer.closed:
            flat_params(self.params, out=torch.from_numpy(self.writer.next_row()))
            self.writer.commit_row(None)
            self.writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
