"""Measure the regularity principle on a hand-written DDP loop (2 CPU processes, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        examples/ddp_loop.py --out runs/ddp-loop

Every rank runs this script: it builds the same model, wraps it in
``DistributedDataParallel`` and trains on its own part of each global batch (a
``DistributedSampler``). Every rank also runs the same ``RegularitySession`` (the
lines marked ``# trajreg``): rank 0 records the trajectory and writes the run
directory, every rank keeps its own micro-batches, and after training the ranks
rebuild each step's loss together (``trajreg.distributed.ranks``). ``start`` and
``finish`` take the unwrapped module: a DDP forward pass is a collective, while the
session's rebuild runs each rank's forward passes on its own.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trajreg.integrations import RegularitySession
from trajreg.train.config import DataConfig
from trajreg.train.data import load_data


def loss_fn(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def main(argv: list[str] | None = None):
    """Train on every rank; returns the run's summary (on every rank)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ddp-loop")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--mode", choices=("store", "sample", "sketch"), default="store")
    p.add_argument("--no-figures", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {world} ranks")

    torch.manual_seed(0)  # the same model on every rank (DDP broadcasts rank 0's anyway)
    data = load_data(DataConfig(name="digits"))
    dataset = TensorDataset(data.x_train, data.y_train)
    # every rank its part of each global batch; equal parts (the sampler pads), so the
    # global batch's loss is the mean of the ranks' losses, as DDP's averaged gradient is
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size // world, sampler=sampler)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64),
                              torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                              torch.nn.Dropout(0.1), torch.nn.Linear(64, 10))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(loader))
    torch.manual_seed(1 + rank)  # each rank its own dropout masks

    # every rank the same session, after init_process_group and the DDP wrap (start
    # checks that every rank holds the same x_0); rank_combine stays "mean": each rank's
    # loss is its own part's mean
    session = RegularitySession(args.out, source="plain", mode=args.mode,  # trajreg
                                figures=not args.no_figures)  # trajreg
    session.start(net, optimizer)  # trajreg
    model.train()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            session.before_batch()  # trajreg
            loss = loss_fn(model, (xb, yb))  # through DDP: its backward averages gradients
            session.after_batch((xb, yb), loss)  # trajreg
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        session.end_epoch()  # trajreg
    summary = session.finish(net, loss_fn)  # trajreg, on every rank

    if rank == 0:
        g, check = summary.gamma_hat or {}, summary.loss_check or {}
        print(f"gamma_hat(eps=0) = {g['0.0']:.4g}, gamma_hat(eps=0.05) = {g['0.05']:.4g}, "
              f"losses rebuilt exactly: {check['equal']}/{check['steps']} on "
              f"{check.get('ranks', 1)} ranks")
        print(f"run directory: {args.out}")
    dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
