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

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trajreg.distributed.train import full_loss_of_parts
from trajreg.record.geometry import interpolate
from trajreg.record.recorder import set_flat_params
from trajreg.run.runner import RunContext
from trajreg.train.loop import TrainLog, build

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

    def f_star(self, k: int) -> float:
        if k == 0 or k in self.log.epoch_ends:  # the training log's F_k
            return super().f_star(k)
        return full_loss_of_parts(self.cfg, self.star, self.data, self.world)

    @torch.no_grad()
    def interpolated_losses(self, alphas: Sequence[float], x0: np.ndarray,
                            x_star: np.ndarray) -> np.ndarray:
        """``RunContext.interpolated_losses`` (the same points: parameters and floating
        batch-norm buffers interpolated in float64 between x_0's, rebuilt from the seed,
        and the trained model's), each F evaluated by ``full_loss_of_parts``."""
        initial, _, _ = build(self.cfg, self.data)  # x_0 and its buffers, from the seed
        start = dict(initial.named_buffers())
        model = copy.deepcopy(self.model)  # leaves the trained model and ``star`` alone
        params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
        x0_t, x_star_t = torch.from_numpy(np.array(x0)), torch.from_numpy(np.array(x_star))
        end = {name: b.detach().clone() for name, b in model.named_buffers()}
        out = []
        for alpha in alphas:
            set_flat_params(params, interpolate(alpha, x0_t, x_star_t).to(params[0].dtype))
            for name, buf in model.named_buffers():
                if buf.is_floating_point() and name in start:
                    buf.copy_(interpolate(alpha, start[name], end[name]).to(buf.dtype))
            out.append(full_loss_of_parts(self.cfg, model, self.data, self.world))
        return np.asarray(out, dtype=np.float64)
