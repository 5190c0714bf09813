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

from trajreg.distributed.ranks import Ranks
from trajreg.distributed.train import full_loss_of_parts, part_of, unwrapped
from trajreg.record.curvature import CurvatureStep
from trajreg.run import rundir, runner
from trajreg.run.runner import RunContext, running_statistics_frozen
from trajreg.train.loop import TrainLog, build, mean_loss, micro_batches, microbatch_loss

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


class RankContext(RunContext):
    """``RunContext`` of one rank of a DDP run, for ``record.curvature``: ``step_loss(t)``
    is this rank's part of l_t, its part of each of step t's micro-batches with their
    random states (what the rank differentiated in training); the measurement averages
    the ranks' parts (``curvature.data_parallel``)."""

    def __init__(self, cfg: RunConfig, data: Dataset, log: TrainLog, model: torch.nn.Module,
                 directory: Path, *, rank: int, world: int) -> None:
        super().__init__(cfg, data, log, model, {}, directory, False)
        self.rank, self.world = rank, world

    def step_loss(self, t: int) -> torch.Tensor:
        idx = self.step_batch(t)
        with running_statistics_frozen(self.star):
            return mean_loss([microbatch_loss(self.cfg, self.star, self.data,
                                              part_of(part, self.rank, self.world), t, j)
                              for j, part in enumerate(micro_batches(self.cfg, idx))])


TIMEOUT = 1800.0  # seconds a rank waits in one of the measurement's collectives


def measure_curvature(cfg: RunConfig, data: Dataset, log: TrainLog, model: torch.nn.Module,
                      run_dir: Path, *, rank: int, world: int
                      ) -> tuple[dict[int, CurvatureStep], float]:
    """``record.curvature`` of a DDP run: every rank calls this after training (a
    collective), on its trained ``model`` (DDP-wrapped; every rank holds x_T), and gets
    the measurement; rank 0 holds the rows (its recorder kept them). Measured on a plain
    copy of the model, so DDP's gradient hooks see none of the Hessian-vector products."""
    plain, _, _ = build(cfg, data)
    plain.load_state_dict(unwrapped(model).state_dict())
    ctx = RankContext(cfg, data, log, plain, run_dir, rank=rank, world=world)
    options = cfg.record.curvature
    assert options is not None
    ranks = Ranks.detect(TIMEOUT)  # a collective: a gloo group of its own
    return runner.measure_curvature(ctx, run_dir / rundir.TRAJECTORY, options, cfg.seed,
                                    plain, ranks=ranks)
