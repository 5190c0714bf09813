"""What a record mode measures: the per-step quantities against one reference point."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Measured:
    """Per-step quantities of the measured steps against x* = x_k (k = ``reference_step``).

    ``steps`` are the step numbers measured (every step 0..k-1 for store and replay; a
    sample for the one-pass modes); every other array is aligned with it. ``loss`` is
    l_t(x_t) when the mode recomputed it (integrations), else None: the training log
    has it. ``columns`` holds further per-step arrays a mode adds to metrics.parquet.
    ``summary`` holds keys a mode adds to summary.json (intervals, self-checks).
    """

    steps: np.ndarray
    D: np.ndarray  # ||x_t - x*||^2
    a: np.ndarray  # <x_t - x*, v_t>
    s: np.ndarray  # ||v_t||^2
    lr: np.ndarray  # eta_t
    loss_star: np.ndarray  # l_t(x*)
    f_star: float  # F(x*)
    reference_step: int
    loss: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        n = len(self.steps)
        for name in ("D", "a", "s", "lr", "loss_star"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (n,):
                raise ValueError(f"Measured.{name}: shape {value.shape}, expected ({n},)")
            setattr(self, name, value)
        if self.loss is not None:
            self.loss = np.asarray(self.loss, dtype=np.float64)

    @classmethod
    def from_table(cls, table: Any, *, f_star: float, reference_step: int,
                   derived: Iterable[str] = (), summary: dict | None = None) -> Measured:
        """The measurement a metrics table (a run's metrics.parquet as a DataFrame) was
        written from: its step, D, a, s, lr, loss_star and loss columns, and as
        ``columns`` every other column but those named in ``derived`` (computed from the
        others by the analysis, which computes them again)."""
        own = {"step", "D", "a", "s", "lr", "loss_star", "loss", *derived}
        return cls(steps=table["step"].to_numpy(), D=table["D"].to_numpy(),
                   a=table["a"].to_numpy(), s=table["s"].to_numpy(),
                   lr=table["lr"].to_numpy(), loss_star=table["loss_star"].to_numpy(),
                   f_star=f_star, reference_step=reference_step,
                   loss=table["loss"].to_numpy(),
                   columns={c: table[c].to_numpy() for c in table.columns if c not in own},
                   summary=dict(summary or {}))

    @classmethod
    def unmeasured(cls, lr: np.ndarray, reference_step: int) -> Measured:
        """Every step, nothing measured (record mode off): NaN quantities."""
        k = len(lr)
        nan = np.full(k, np.nan)
        return cls(steps=np.arange(k), D=nan, a=nan, s=nan, lr=np.asarray(lr, dtype=float),
                   loss_star=nan, f_star=float("nan"), reference_step=reference_step)

    def select(self, keep: np.ndarray) -> Measured:
        """The rows where the boolean mask ``keep`` (aligned with ``steps``) is true."""
        return dataclasses.replace(
            self, steps=self.steps[keep], D=self.D[keep], a=self.a[keep], s=self.s[keep],
            lr=self.lr[keep], loss_star=self.loss_star[keep],
            loss=None if self.loss is None else self.loss[keep],
            columns={c: np.asarray(v)[keep] for c, v in self.columns.items()})

    @property
    def every_step(self) -> bool:
        """Whether steps are 0..n-1 (all steps up to the reference), not a sample."""
        return bool(len(self.steps) == 0 or (self.steps == np.arange(len(self.steps))).all())
