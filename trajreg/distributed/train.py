"""The reference loop on N processes: each rank takes its contiguous part of every global
batch; DDP or FSDP2 averages the gradients, so every rank takes the step the single
process would take on the whole batch (up to the order of float32 additions).

The run stays a function of its seed exactly as ``trajreg.train.loop`` defines it: the
same model init on every rank (from (seed, 0)), the same global batches (from
(seed, 1, epoch)), and step t's random state (seed, 2, t) set before each rank's
forward pass. What differs from one process: a rank draws dropout masks for its part
only (so masks are not the single process's), and batch norm normalises with its
part's statistics (as plain DDP does).

With ``train.accumulate`` k, each rank takes its part of each of the step's k
micro-batches, and every micro-batch's backward averages the gradients over the ranks
(DDP's all-reduce, FSDP2's reduce-scatter: correct, though not the fewest collectives);
``train.grad_clip`` then clips the averaged gradients (under FSDP2 the sharded DTensor
gradients, whose global norm ``clip_grad_norm_`` reduces over the ranks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist

from trajreg.train.data import Dataset
from trajreg.train.loop import (
    Scheduler,
    TrainLog,
    build,
    eval_chunk,
    eval_mode,
    microbatch_loss,
    objective,
    steps_per_epoch,
    total_steps,
    train,
)
from trajreg.train.optim import build_optimizer, build_scheduler, parameter_groups

if TYPE_CHECKING:
    from trajreg.train.config import RunConfig


def part_of(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous part of a global batch (the batch size divides evenly)."""
    n = len(idx) // world
    return idx[rank * n : (rank + 1) * n]


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP2 shards one by one before the root: those the model declares by a
    ``shard_units()`` method (a transformer: its blocks, each gathered whole for its
    forward and freed after), else every module owning parameters, children first."""
    declared = getattr(model, "shard_units", None)
    if callable(declared):
        return list(declared())
    return [m for m in reversed(list(model.modules()))  # children before their parents
            if m is not model and any(True for _ in m.parameters(recurse=False))]


def wrap(model: torch.nn.Module, strategy: str, world: int, device: str) -> torch.nn.Module:
    """The model under DDP, or sharded with FSDP2's ``fully_shard``: each of its
    ``shard_units``, then the root (which holds every parameter no unit holds), so one
    unit's parameters are gathered at a time."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (world,))
    for module in shard_units(model):
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def build_distributed(cfg: RunConfig, data: Dataset, strategy: str, world: int
                      ) -> tuple[torch.nn.Module, torch.optim.Optimizer, Scheduler]:
    """``loop.build``'s model (the same init on every rank), wrapped, with the optimizer
    and schedule built over the wrapped parameters (FSDP2 replaces them by DTensors)."""
    model, _, _ = build(cfg, data)
    model = wrap(model, strategy, world, cfg.train.device)
    optimizer = build_optimizer(cfg.optim, parameter_groups(cfg.optim, model))
    scheduler = build_scheduler(cfg.optim, optimizer, total_steps(cfg, data),
                                steps_per_epoch(cfg, data))
    return model, optimizer, scheduler


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP keeps the model as .module


def mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """The mean over ranks of a scalar (float64): the global batch's mean loss from the
    ranks' equal parts."""
    t = value.detach().to(torch.float64).reshape(1).clone()
    dist.all_reduce(t)
    return t.item() / world


def _part_loss_sum(cfg: RunConfig, module: torch.nn.Module, data: Dataset, rank: int,
                   world: int, chunk: int) -> torch.Tensor:
    """The summed losses of rank ``rank``'s contiguous part of the training set (float64,
    shape (1,)): ceil(ceil(n / world) / chunk) forward passes, the last ones possibly
    empty, each pass's float32 sum added in float64. The training set is the one
    ``loop.full_loss`` evaluates (``Dataset.eval_train``), with the task's loss."""
    x, y = data.eval_train
    loss = objective(data).loss
    n = len(x)
    per = math.ceil(n / world)
    lo, hi = min(rank * per, n), min((rank + 1) * per, n)
    device = cfg.train.device
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for i in range(math.ceil(per / chunk)):
        a = min(lo + i * chunk, hi)
        b = min(a + chunk, hi)
        xb, yb = x[a:b].to(device), y[a:b].to(device)
        total += loss(module(xb), yb, "sum").to(torch.float64)
    return total


@torch.no_grad()
def full_loss(cfg: RunConfig, model: torch.nn.Module, data: Dataset, rank: int, world: int,
              chunk: int | None = None) -> float:
    """F(x), the mean training-set loss in eval mode: each rank sums the losses of its
    contiguous part of the training set, the sums are added over ranks. Every rank runs
    the same number of forward passes (FSDP2 gathers parameters collectively), the last
    ones possibly empty."""
    with eval_mode(unwrapped(model)) as module:
        total = _part_loss_sum(cfg, module, data, rank, world, chunk or eval_chunk(data))
    dist.all_reduce(total)
    return total.item() / objective(data).counted(data.eval_train[1])


@torch.no_grad()
def full_loss_of_parts(cfg: RunConfig, model: torch.nn.Module, data: Dataset, world: int,
                       chunk: int | None = None) -> float:
    """F(x) in one process (a plain model, after training), computed as ``full_loss``
    computes it on ``world`` ranks: every rank's part summed the same way, the parts
    added in rank order. With 2 ranks this is ``full_loss``'s value bit for bit (the
    all_reduce of two float64 numbers is their sum, in either order), given the same
    parameters and buffers on every rank; with more, up to the order of the float64
    additions of the all_reduce."""
    total = torch.zeros(1, dtype=torch.float64, device=cfg.train.device)
    with eval_mode(unwrapped(model)) as module:
        for rank in range(world):
            total += _part_loss_sum(cfg, module, data, rank, world,
                                    chunk or eval_chunk(data))
    return total.item() / objective(data).counted(data.eval_train[1])


def train_distributed(cfg: RunConfig, data: Dataset, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, scheduler: Scheduler, *, rank: int,
                      world: int, on_epoch: Callable[[int], None] | None = None,
                      eval_full: bool = True) -> TrainLog:
    """``loop.train`` on this rank's part of every global batch. Every rank logs the same
    numbers: l_t(x_t) is the mean of the ranks' part means (the global batch's mean), F_k
    the summed losses over the ranks' parts of the training set; so every rank stops at
    the same step on a non-finite loss. ``eval_full=False`` skips F_k (benchmarks)."""
    def micro_loss(idx: torch.Tensor, step: int, micro: int) -> tuple[torch.Tensor, float]:
        loss = microbatch_loss(cfg, model, data, part_of(idx, rank, world), step, micro)
        return loss, mean_over_ranks(loss, world)

    return train(cfg, data, model, optimizer, scheduler, eval_full=eval_full, progress=False,
                 on_epoch=on_epoch, micro_loss=micro_loss,
                 evaluate=lambda: full_loss(cfg, model, data, rank, world))


def full_state(model: torch.nn.Module, strategy: str, rank: int) -> dict[str, torch.Tensor]:
    """The model's whole state (parameters and buffers) on rank 0, a CPU copy; an empty
    dict on the other ranks. After training only: under FSDP2 this gathers every
    parameter (a collective every rank must call)."""
    if strategy == "ddp":
        if rank != 0:
            return {}
        return {k: v.detach().cpu().clone() for k, v in unwrapped(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return cast("dict[str, torch.Tensor]", state) if rank == 0 else {}
