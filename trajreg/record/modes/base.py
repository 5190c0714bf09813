"""The record-mode protocol: how a mode records during training and measures after it.

A record mode is one class behind this small interface, registered by name in
``trajreg.record.modes.MODES``. The recorder (``trajreg.record.Recorder``) owns the
optimizer hooks and calls the mode on every step; after training, whoever trained
the run (``trajreg run``'s runner, or an integration's session) hands the mode a
``MeasureContext`` that can evaluate losses, and the mode returns a ``Measured``.

Adding a mode is one module defining a ``RecordMode`` subclass plus one line in
the registry (see docs/record-modes.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from trajreg.record.measured import Measured

if TYPE_CHECKING:
    from trajreg.record.recorder import Recorder


class MeasureContext(Protocol):
    """What a mode may ask of the code that trained the run, after training.

    ``directory`` is the run directory (a mode's files are under it); ``steps`` is T.
    ``load(x)`` puts the flat parameter vector x into the evaluation model (buffers
    stay the trained model's); ``step_losses(ts)`` is l_t at the loaded parameters for
    each step t in ``ts``, with step t's own minibatch, model mode and random state;
    ``f_star(k)`` is F(x_k) (the loaded parameters are x_k); ``replay(k)`` re-executes
    the run and measures it against x_k (only ``trajreg run`` can; integrations raise
    a UserError). ``interpolated_losses(alphas, x0, x_star)`` is F, evaluated as F_k
    is, at (1 - alpha) x0 + alpha x* for each alpha (the reference loop interpolates
    batch-norm running statistics the same way between the initial and the final
    ones); a context may leave it out, or set ``mli = False`` to skip it (the
    sensitivity analysis' second reference).
    """

    directory: Path
    steps: int

    def load(self, x: np.ndarray) -> None: ...

    def step_losses(self, steps: Sequence[int]) -> np.ndarray: ...

    def f_star(self, k: int) -> float: ...

    def replay(self, k: int) -> Measured: ...

    def interpolated_losses(self, alphas: Sequence[float], x0: np.ndarray,
                            x_star: np.ndarray) -> np.ndarray: ...


class RecordMode(ABC):
    """One way of recording a trajectory (see the module docstring).

    Class attributes:
        name: the registry name (``record.mode`` in a config).
        hooks: whether the mode needs the optimizer's step hooks at all.
        reanalyse: reference points (``final``, ``best``) the mode can measure against
            after training without retraining.
        cost: its memory and disk, in words (README's table and docs).
        gradients: whether the mode also records the minibatch gradient g_t of each
            step (``RecordConfig.gradients``; the class value is the mode's default).
    """

    name: ClassVar[str]
    hooks: bool = True  # a class default; a mode instance may switch it off
    reanalyse: ClassVar[tuple[str, ...]] = ("final",)
    cost: ClassVar[str] = ""
    gradients: bool = False

    @classmethod
    def from_config(cls, cfg: Any = None, seed: int = 0) -> RecordMode:
        """The mode with the options of a ``RecordConfig`` (None: the defaults); ``seed``
        is the run's seed, from which a mode derives its own randomness."""
        mode = cls()
        mode.gradients = gradients_option(cls, cfg)
        return mode

    def plan(self, steps: int, analysis: Any) -> None:  # noqa: B027 - optional hook
        """Before training: the number of steps the run will take and its
        ``AnalysisConfig``. A mode may warn, or refuse (``ConfigError``) a reference point
        it cannot measure against."""

    # ------------------------------------------------------------ during training
    def open(self, rec: Recorder, directory: Path | None, **options: Any) -> None:  # noqa: B027 - optional hook
        """Prepare to record the optimizer of ``rec`` (files under ``directory``)."""

    def keep(self, step: int) -> bool:
        """Whether step ``step`` is measured (its minibatch and random state must be kept)."""
        return True

    def pre_step(self, rec: Recorder, step: int, lr: float) -> None:  # noqa: B027 - optional hook
        """Just before optimizer step ``step``: the parameters are x_t."""

    def post_step(self, rec: Recorder, step: int) -> None:  # noqa: B027 - optional hook
        """Just after optimizer step ``step``: the parameters are x_{t+1}."""

    def close(self, rec: Recorder) -> None:  # noqa: B027 - optional hook
        """Training is over: the parameters are x_T; seal the files."""

    # ------------------------------------------------------------ after training
    @abstractmethod
    def measure(self, ctx: MeasureContext, k: int) -> Measured | None:
        """The per-step quantities against x* = x_k (None: the mode measures nothing)."""

    def can_reanalyse(self, reference: str) -> bool:
        return reference in self.reanalyse


def gradients_option(cls: type[RecordMode], cfg: Any) -> bool:
    """``record.gradients`` of a ``RecordConfig`` (None or no config: the mode's default)."""
    value = getattr(cfg, "gradients", None)
    return bool(cls.gradients) if value is None else bool(value)
