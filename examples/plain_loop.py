"""Measure the regularity principle on a hand-written PyTorch training loop.

    python examples/plain_loop.py --out runs/plain-loop

The loop below is an ordinary one; the lines marked ``# trajreg`` are all that
measuring it takes. ``session.before_batch()`` keeps the random state the forward
pass will use (dropout masks), ``session.after_batch(batch, loss)`` keeps the
micro-batch and its loss, and the optimizer's steps are seen through step hooks.
At the end ``finish`` rebuilds every step's loss at x_t and at x* = x_T from the
kept batches, checks it against the losses the loop computed, and writes the run
directory that ``trajreg run`` writes (``trajreg analyze`` reads it).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from trajreg.integrations import RegularitySession
from trajreg.train.config import DataConfig
from trajreg.train.data import load_data


def loss_fn(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/plain-loop")
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits"))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64),
                                torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                torch.nn.Dropout(0.1), torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(loader))

    session = RegularitySession(args.out, source="plain")  # trajreg
    session.start(model, optimizer)  # trajreg
    model.train()
    for _ in range(args.epochs):
        for xb, yb in loader:
            session.before_batch()  # trajreg
            loss = loss_fn(model, (xb, yb))
            session.after_batch((xb, yb), loss)  # trajreg
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        session.end_epoch()  # trajreg
    summary = session.finish(model, loss_fn)  # trajreg

    g = summary.gamma_hat
    print(f"gamma_hat(eps=0) = {g['0.0']:.4g}, gamma_hat(eps=0.05) = {g['0.05']:.4g}, "
          f"losses rebuilt exactly: {summary.loss_check['equal']}/"
          f"{summary.loss_check['steps']}")
    print(f"run directory: {args.out}")
    return summary


if __name__ == "__main__":
    main()
