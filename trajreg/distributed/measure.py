"""Rank 0's measurement after a distributed run (``trajreg.distributed.worker.write_run``).

Rank 0 measures in one process, on a plain model holding the gathered final state, with
the code of ``trajreg run`` (``trajreg.run.runner.RunContext``). One thing differs: F at
a point the training log does not hold (the interpolation from x_0 to x*, the ``mli``
summary key, and F(x_k) for a reference k that is no epoch end) is evaluated as the ranks
evaluated F_k during training (``trajreg.distributed.train.full_loss``: each rank's part
of the training set in chunks, the parts' float64 sums added), by
``full_loss_of_parts``; so the interpolation's ends are F_0 and F(x*) of the run's own
log, bit for bit with 2 ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trajreg.distributed.train import full_loss_of_parts
from trajreg.run.runner import RunContext
from trajreg.train.loop import TrainLog

if TYPE_CHECKING:
    from trajreg.train.config import RunConfig
    from trajreg.train.data import Dataset


class DistributedRunContext(RunContext):
    """``RunContext`` of a run trained on ``world`` ranks: F is evaluated as the ranks
    evaluated it (``full_loss_of_parts``)."""

    def __init__(self, cfg: RunConfig, data: Dataset, log: TrainLog, model: torch.nn.Module,
                 final_state: dict, directory: Path, progress: bool | None = None, *,
                 world: int) -> None:
        super().__init__(cfg, data, log, model, final_state, directory, progress)
        self.world = world

    def full_loss_of(self, model: torch.nn.Module) -> float:
        return full_loss_of_parts(self.cfg, model, self.data, self.world)
