"""Measure a Lightning run with one callback.

    python examples/lightning_mlp.py --out runs/lightning-mlp [--epochs 5]

An ordinary LightningModule (an MLP with batch norm and dropout on scikit-learn's 8x8
digits, SGD with momentum); the line marked ``# trajreg`` is all that measuring it takes.
The callback records the trajectory, rebuilds each step's loss on its own batch and
random state after training and writes the run directory ``trajreg run`` writes.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch

from trajreg.integrations.lightning import RegularityCallback  # trajreg
from trajreg.train.config import DataConfig
from trajreg.train.data import load_data


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64),
                                       torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.1), torch.nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/lightning-mlp", help="the run directory")
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args(argv)
    data = load_data(DataConfig(name="digits"))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True)
    torch.manual_seed(0)
    callback = RegularityCallback(args.out)  # trajreg
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Net(), loader)
    summary = callback.summary
    assert summary is not None and summary.gamma_hat is not None
    print(f"gamma_hat(eps=0.05) = {summary.gamma_hat['0.05']:.4g}; run directory: {args.out}")
    return summary


if __name__ == "__main__":
    main()
