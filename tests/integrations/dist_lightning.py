"""A tiny Lightning fit with RegularityCallback on 2 CPU processes, for
test_distributed_callbacks.py: ``python dist_lightning.py OUT STATUS_DIR [--fail-rank R]
[--fsdp2 OUT2]``. Under ``strategy="ddp"`` Lightning starts rank 1 by running this file
again, so it is a script, not a test module.

Every rank writes ``STATUS_DIR/rank-N.pid`` when the fit starts and ``STATUS_DIR/rank-N``
when it ends (``ok`` or ``error: ...``, then it exits 0 or 1), and after each fit
``rank-N.ddp.json`` (``rank-N.fsdp2.json``): the loss of each of its micro-batches.
``--fail-rank R`` makes rank R raise in its 4th training step; ``--fsdp2 OUT2`` fits the
same model again in the same processes under FSDP2 (``ModelParallelStrategy`` with
``fully_shard`` in ``configure_model``), into OUT2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("status")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fsdp2", metavar="OUT2",
                   help="then fit again under FSDP2 (ModelParallelStrategy), into OUT2")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.fsdp import fully_shard

    from trajreg.integrations.lightning import RegularityCallback
    from trajreg.train.config import DataConfig
    from trajreg.train.data import load_data

    status = Path(args.status)
    losses: list[float] = []

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
                torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 10))

        def configure_model(self):
            if isinstance(self.trainer.strategy, ModelParallelStrategy):
                mesh = self.device_mesh["data_parallel"]
                for layer in (self.net[1], self.net[5]):
                    fully_shard(layer, mesh=mesh)
                fully_shard(self.net, mesh=mesh)

        def training_step(self, batch, batch_idx):
            if self.global_rank == args.fail_rank and self.trainer.global_step == 3:
                raise RuntimeError(f"injected failure on rank {self.global_rank}")
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            if torch.is_grad_enabled():  # training, not the callback rebuilding it
                losses.append(float(loss.detach()))
            return loss

        def on_fit_start(self):
            (status / f"rank-{self.global_rank}.pid").write_text(str(os.getpid()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    data = load_data(DataConfig(name="digits", subset=320))
    ds = torch.utils.data.TensorDataset(data.x_train, data.y_train)

    def fit(out: str, strategy, tag: str) -> None:
        pl.seed_everything(0, verbose=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
        cb = RegularityCallback(out, figures=False, timeout=60)
        trainer = pl.Trainer(max_epochs=2, gradient_clip_val=0.5, callbacks=[cb], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=2,
                             strategy=strategy)
        losses.clear()
        trainer.fit(Net(), loader)
        (status / f"rank-{trainer.global_rank}.{tag}.json").write_text(json.dumps(losses))

    try:
        fit(args.out, "ddp", "ddp")
        if args.fsdp2:
            fit(args.fsdp2, ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                "fsdp2")
    except BaseException as exc:  # noqa: BLE001 - the test reads how every rank ended
        rank = int(os.environ.get("LOCAL_RANK", 0))
        (status / f"rank-{rank}").write_text(f"error: {type(exc).__name__}: {exc}\n")
        raise SystemExit(1) from exc
    (status / f"rank-{os.environ.get('LOCAL_RANK', 0)}").write_text("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
