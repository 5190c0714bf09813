"""Record mode ``replay``: nothing of size T*d is kept; the run is replayed after training.

During training the mode keeps nothing (the run's own seed, data order and per-step
random state define it). After training, ``MeasureContext.replay(k)`` re-executes
the run with a ``ReplayStream`` against the now-known x* and proves that it
reproduced the recorded run bit for bit. Only the reference loop (``trajreg run``)
can replay; integrations refuse it. Memory O(d); a second training run. With
``gradients`` the replay's recorder also streams g_dot_t = <g_t, x_t - x*> and
g_norm2_t = ||g_t||^2 of the gradient each replayed step sees (the training's own,
since the replay reproduces it bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from trajreg.principle import gradient_quantities, step_quantities
from trajreg.record.measured import Measured
from trajreg.record.modes.base import MeasureContext, Recording, RecordMode


class StepStream:
    """Streaming per-step quantities against a known x* (update/compute, like torchmetrics).

    ``update(x_t, x_next, lr)`` adds one step's D_t, a_t, s_t; ``compute()`` returns the
    arrays D, a, s, lr. Memory: O(d) for x*, plus three floats per step.
    """

    def __init__(self, x_star: np.ndarray | torch.Tensor) -> None:
        self.x_star = np.asarray(torch.as_tensor(x_star).detach().cpu(), dtype=np.float64)
        self.D: list[float] = []
        self.a: list[float] = []
        self.s: list[float] = []
        self.lr: list[float] = []
        self.g_dot: list[float] = []
        self.g_norm2: list[float] = []

    def update(self, x: torch.Tensor, x_next: torch.Tensor, lr: float) -> None:
        D, a, s = step_quantities(x, x_next, self.x_star, lr)
        self.D.append(D)
        self.a.append(a)
        self.s.append(s)
        self.lr.append(lr)

    def update_gradient(self, x: torch.Tensor, g: torch.Tensor) -> None:
        """Add g_dot_t and g_norm2_t of the gradient g at x = x_t."""
        q = gradient_quantities(x.numpy()[None], g.numpy()[None], self.x_star)
        self.g_dot.append(float(q.g_dot[0]))
        self.g_norm2.append(float(q.g_norm2[0]))

    def compute(self) -> dict[str, np.ndarray]:
        """D, a, s, lr, and g_dot, g_norm2 when gradients were streamed."""
        keys = ("D", "a", "s", "lr") + (("g_dot", "g_norm2") if self.g_dot else ())
        return {k: np.asarray(getattr(self, k), dtype=np.float64) for k in keys}


class ReplayMode(RecordMode):
    name = "replay"
    reanalyse: ClassVar[tuple[str, ...]] = ()  # another reference replays again
    cost = "memory O(d), no trajectory on disk; a second training run"
    reexecutes: ClassVar[bool] = True

    def __init__(self, gradients: bool | None = None) -> None:
        if gradients is not None:
            self.gradients = gradients
        self.stream: StepStream | None = None
        self._x_prev: torch.Tensor | None = None
        self._lr_prev = 0.0

    def open(self, rec: Recording, directory: Path | None, *,
             x_star: np.ndarray | torch.Tensor | None = None, **_: Any) -> None:
        """Recording against a known x* (the replay itself); without x*, training
        records nothing and ``measure`` replays."""
        if x_star is None:
            self.hooks = False  # training itself: nothing to record
            return
        self.stream = StepStream(x_star)
        if self.stream.x_star.shape != (rec.d,):
            raise ValueError(f"x_star has shape {self.stream.x_star.shape}, "
                             f"the optimizer's parameters have {rec.d} entries")

    @property
    def streaming(self) -> bool:
        return self.stream is not None

    def pre_step(self, rec: Recording, step: int, lr: float) -> None:
        if self.stream is not None:
            self._x_prev = rec.flat().cpu()
            self._lr_prev = lr
            if self.gradients:
                self.stream.update_gradient(self._x_prev, rec.grad_flat().cpu())

    def post_step(self, rec: Recording, step: int) -> None:
        if self.stream is not None:
            assert self._x_prev is not None, "post_step without pre_step"
            self.stream.update(self._x_prev, rec.flat().cpu(), self._lr_prev)
            self._x_prev = None

    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        return ctx.replay(k)
