"""How a session measures after training: each step's loss rebuilt on its own micro-batches.

``SessionContext`` is the ``MeasureContext`` the record mode measures through: l_t at
any loaded parameters from step t's recorded micro-batches and random states (every
rank its own, added over the ranks: ``trajreg.distributed.ranks``), F(x*) and the
interpolation's F as the mean over a fixed evaluation set of steps, and the check of
every rebuilt l_t(x_t) against the loss the framework logged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajreg.distributed.ranks import LOAD, LOSSES, Ranks, reshard
from trajreg.errors import UserError
from trajreg.integrations.microbatches import (
    MicroBatches,
    map_tensors,
    rng_state,
    set_rng_state,
)
from trajreg.record.measured import Measured

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


@contextlib.contextmanager
def kept_state(model: torch.nn.Module) -> Iterator[None]:
    """Move the model's parameters and evaluate it in train mode without leaving a
    trace: its state (parameters and BN statistics), mode and the global random
    state are restored afterwards."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    training = model.training
    rng = rng_state()
    try:
        yield
    finally:
        reshard(model)  # FSDP2: the state is the shards'
        model.load_state_dict(state)  # copies in place
        model.train(training)
        set_rng_state(rng)


@dataclass
class LossCheck:
    """How rebuilt losses are compared with logged ones: ``rtol`` (0: bit for bit),
    and a step's loss from the ranks' (``rank_combine``: their mean or their sum)."""

    rtol: float
    rank_combine: str = "mean"

    def beyond(self, logged: np.ndarray, rebuilt: np.ndarray) -> np.ndarray:
        """Where a rebuilt loss is not the logged one: both finite, and further apart than
        ``rtol`` times the larger magnitude."""
        known = np.isfinite(logged) & np.isfinite(rebuilt)
        with np.errstate(invalid="ignore"):
            apart = np.abs(logged - rebuilt) > self.rtol * np.maximum(np.abs(logged),
                                                                      np.abs(rebuilt))
        return known & apart

    def across(self, total: np.ndarray, world: int) -> np.ndarray:
        """A step's loss from the sum of the ranks' losses."""
        return total / world if self.rank_combine == "mean" else total


class SessionContext:
    """``MeasureContext`` of an integration: step t's loss is rebuilt from its recorded
    micro-batches and random states; F(x*) is the mean of l_t(x*) over the evaluation
    set (``f_star``), and the interpolation's F is that same mean; a session cannot
    replay.

    Rank 0's context sends each ``load`` and each uncached ``step_losses`` to the other
    ranks (``Ranks.send``: nothing on one process), whose contexts run ``rank_losses``
    with it. ``equal`` and ``max_diff`` accumulate the checks of ``step_losses(...,
    check=True)``: the steps at which every rank's rebuilt loss equals its own loss from
    training bit for bit, and the largest difference; ``beyond`` and ``mismatched`` the
    steps beyond the check's tolerance.

    Args:
        directory: the run directory being written; ``steps``: T as measured (k).
        batches: this rank's micro-batches; ``recorded``: its logged step losses.
        put: loads a whole flat vector into the parameters (FSDP2: this rank's entries).
        keep: whether a step is measured (its micro-batches kept).
        sharded: FSDP2 (a forward pass is a collective: every rank reads all of a
            command's micro-batches first).
        mli: whether the mode interpolates (FSDP2: no rank holds the whole vector).
        ends: the epoch ends up to k; ``eval_batches``: the evaluation set's size.
        params: the parameters ``put`` loads, in the flat order (``record.curvature``).
    """

    def __init__(self, *, directory: Path, steps: int, ranks: Ranks, batches: MicroBatches,
                 recorded: np.ndarray, check: LossCheck, model: torch.nn.Module,
                 loss_fn: LossFn, device: torch.device, put: Callable[[np.ndarray], None],
                 keep: Callable[[int], bool], sharded: bool, mli: bool, ends: list[int],
                 eval_batches: int, params: Sequence[torch.Tensor] = ()) -> None:
        self.directory, self.steps, self.mli = directory, steps, mli
        self.ranks, self.batches, self.recorded, self.check = ranks, batches, recorded, check
        self.model, self.loss_fn, self.device, self.put = model, loss_fn, device, put
        self.keep, self.sharded, self.ends = keep, sharded, ends
        self.eval_batches = eval_batches
        self.params = list(params)
        self._read: tuple[int, list] | None = None  # step_loss's last step and batches
        self._at: dict[int, float] = {}
        self.equal, self.max_diff = 0, 0.0
        self.beyond = 0  # checked steps beyond the tolerance on some rank
        self.mismatched: list[tuple[int, float, float]] = []  # this rank's: t, logged, rebuilt

    def load(self, x: np.ndarray) -> None:
        self.ranks.send(LOAD, x)
        self.put(x)
        self._at = {}

    def forget(self) -> None:
        """The parameters were changed without ``load``: no cached loss holds."""
        self._at = {}

    def step_losses(self, steps: Sequence[int], check: bool = False) -> np.ndarray:
        todo = [t for t in dict.fromkeys(int(t) for t in steps) if t not in self._at]
        if todo:
            self.ranks.send(LOSSES, np.asarray(todo), flag=int(check))
            self._at.update(zip(todo, self.rank_losses(todo, check), strict=True))
        return np.asarray([self._at[int(t)] for t in steps], dtype=np.float64)

    def rank_losses(self, steps: list[int], check: bool) -> np.ndarray:
        """l_t at the loaded parameters: this rank's, from its own micro-batches, added
        over the ranks (every rank calls it with the same steps; a rank's own failure is
        handed on in the collective, so that every rank leaves together)."""
        ranks, batches = self.ranks, self.batches
        n = len(steps)
        local = np.full(n, np.nan)
        loaded: list = [None] * n
        complete = np.ones(n, dtype=bool)
        error: BaseException | None = None
        if self.sharded:
            # FSDP2: a forward pass is a collective, so every rank first reads all its
            # micro-batches, then the ranks agree on the steps complete on every rank
            try:
                loaded = [batches.read(t) for t in steps]
            except Exception as exc:
                error = exc
            missing = np.asarray([b is None for b in loaded], dtype=np.float64)
            complete = ranks.allsum_checked("reading its micro-batches", missing, error) == 0
        try:
            for i, t in enumerate(steps):
                if complete[i]:
                    local[i] = batches.loss(self.model, self.loss_fn, t, self.device,
                                            loaded[i])
        except Exception as exc:
            error = exc
        recorded = self.recorded[steps]
        unequal = (recorded != local).astype(np.float64)
        beyond = self.check.beyond(recorded, local).astype(np.float64)
        total = ranks.allsum_checked("rebuilding its step losses",
                                     np.concatenate([local, unequal, beyond]), error)
        values = self.check.across(total[:n], ranks.world)
        if check:  # the parameters are x_t
            mine = self.check.beyond(recorded, local)
            self.beyond += int(np.sum(total[2 * n:] > 0))
            self.mismatched += [(int(steps[i]), float(recorded[i]), float(local[i]))
                                for i in np.flatnonzero(mine)]
            known = np.isfinite(recorded) & np.isfinite(local)
            diff = float(np.max(np.abs(recorded - local)[known], initial=0.0))
            self.equal += int(np.sum(total[n : 2 * n] == 0))
            self.max_diff = max(self.max_diff, ranks.allmax("measuring", diff))
        return values

    def curvature_parameters(self) -> list[torch.Tensor]:
        """The parameters ``load`` puts x into, in the recorder's flat order
        (``record.curvature``)."""
        return self.params

    def step_loss(self, t: int) -> torch.Tensor:
        """l_t at the loaded parameters with a graph (``record.curvature``): ``loss_fn``
        on step t's kept micro-batches, each with the random state it saw in training,
        combined as ``step_losses`` combines them (mean or sum), on this rank's
        micro-batches only. Batch norm normalises with each micro-batch's statistics (train
        mode); the running statistics it updates are restored with the model's state
        (``kept_state``), as for b_t."""
        if self._read is None or self._read[0] != t:  # the critical step asks again
            loaded = self.batches.read(t)
            if not loaded:
                raise ValueError(f"step {t}: its micro-batches were not kept")
            self._read = (t, loaded)
        values = []
        for batch, rng in self._read[1]:
            set_rng_state(rng)
            values.append(self.loss_fn(self.model,
                                       map_tensors(batch, lambda x: x.to(self.device))))
        total = sum(values[1:], values[0])
        return total if self.batches.combine == "sum" else total / len(values)

    def f_star(self, k: int) -> float:
        """The mean of the step losses over the evaluation set: the last measured steps
        (micro-batches kept, a loss of their own) of the last epoch before k, until they
        hold ``eval_batches`` micro-batches."""
        last = self.ends[-2] if len(self.ends) > 1 else 0
        unknown = self.batches.no_batch
        steps = ([t for t in range(last, k) if self.keep(t) and t not in unknown]
                 or [t for t in range(k) if self.keep(t) and t not in unknown])
        size = 0
        for i in range(len(steps) - 1, -1, -1):
            size += len(self.batches.members(steps[i]))
            if size >= self.eval_batches:
                steps = steps[i:]
                break
        return float(np.mean(self.step_losses(steps))) if steps else math.nan

    def replay(self, k: int) -> Measured:
        raise UserError("a run recorded by an integration cannot be replayed")

    def interpolated_losses(self, alphas: Sequence[float], x0: np.ndarray,
                            x_star: np.ndarray) -> np.ndarray:
        """F as ``f_star`` evaluates it here (the mean of the last epoch's kept steps'
        losses, each on its own micro-batches and random state, in training mode) at
        (1 - alpha) x0 + alpha x* for each alpha; alpha 1 is ``f_star`` bit for bit.
        Normalization buffers stay the trained model's: a training-mode forward pass
        normalizes with the micro-batch's own statistics. Leaves x* loaded."""
        start, end = np.asarray(x0, np.float64), np.asarray(x_star, np.float64)
        out = []
        for alpha in alphas:
            a = float(alpha)
            self.load((1.0 - a) * start + a * end)
            out.append(self.f_star(self.steps))
        self.load(end)
        return np.asarray(out, dtype=np.float64)
