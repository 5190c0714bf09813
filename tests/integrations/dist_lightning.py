"""A tiny Lightning fit with RegularityCallback on 2 CPU processes, for
test_distributed_callbacks.py: ``python dist_lightning.py OUT STATUS_DIR [--fail-rank R]
[--fsdp2 OUT2]``. Under ``strategy="ddp"`` Lightning starts rank 1 by running this file
again, so it is a script, not a test module.

Every rank writes ``STATUS_DIR/rank-N.pid`` when the fit starts and ``STATUS_DIR/rank-N``
when it ends (``ok`` or ``error: ...``, then it exits 0 or 1), and after each fit
``rank-N.ddp.json`` (``rank-N.fsdp2.json``): the loss of each of its micro-batches.
``--fail-rank R`` makes rank R raise in its 4th training step; ``--fsdp2 OUT2`` fits the
same model again in the same processes under FSDP2 (``ModelParallelStrategy`` with
``fully_shard`` in ``configure_model``), into OUT2; ``--fsdp2-sketch OUT3`` then fits it
once more under FSDP2 in record mode sketch (``sketch_mode``: k = 256 < d = 2474), into OUT3;
``--curvature OUT4`` then fits it once more under DDP in store mode with ``CURVATURE``, into
OUT4.

``--single`` is the single-process reference of the FSDP2 fits (a single-device
Trainer, OUT in store mode, OUT3 in sketch mode, OUT4 in store mode with ``CURVATURE``,
``rank-0.single.json``): the same
training in one process. Each step's minibatch is both ranks' micro-batches, in the
order Lightning's DistributedSampler gives each rank (``TwoRanks``), and its loss their
mean, each micro-batch's forward pass as on its rank (its own BatchNorm statistics; the
random state both ranks start the step with: they draw the same dropout masks), so the
gradient is the ranks' reduced one (each micro-batch's halved, exact, and the two added
once, as the 2-rank reduction does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def sketch_mode():  # the FSDP2 sketch fit's mode, and its reference's
    from trajreg.record.modes.sketch import SketchMode

    return SketchMode(dim=256, seed=7)


CURVATURE = dict(rate=0.5)  # the DDP curvature fit's option, and its reference's


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("status")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fsdp2", metavar="OUT2",
                   help="then fit again under FSDP2 (ModelParallelStrategy), into OUT2")
    p.add_argument("--fsdp2-sketch", metavar="OUT3",
                   help="then fit again under FSDP2 in sketch mode, into OUT3")
    p.add_argument("--curvature", metavar="OUT4",
                   help="then fit again under DDP with RegularityCallback(curvature=...), "
                        "into OUT4")
    p.add_argument("--single", action="store_true",
                   help="the single-process reference: OUT in store mode, OUT3 in sketch mode, "
                        "OUT4 with curvature")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from lightning.fabric.utilities.seed import reset_seed
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

    class TwoRanksNet(Net):
        """One process, two ranks' micro-batches a step (``--single``)."""

        def setup(self, stage):
            # as the DDP and FSDP2 strategies do on every rank when they set up (before
            # this hook): the random state the ranks' first dropout masks come from
            reset_seed()

        def training_step(self, batch, batch_idx):
            x, y = batch
            state = torch.get_rng_state()
            parts = []
            for half in (slice(0, 16), slice(16, 32)):
                torch.set_rng_state(state)
                parts.append(super().training_step((x[half], y[half]), batch_idx))
            # in float64, as the callback adds the ranks' losses; the casts pass the
            # factor 1/2 back to float32 unchanged
            return (parts[0].double() + parts[1].double()) / 2

    class TwoRanks(torch.utils.data.Sampler):
        """Both ranks' DistributedSampler orders (Lightning's: seed PL_GLOBAL_SEED = 0),
        one micro-batch of each in turn: a global batch of 32."""

        def __init__(self, n: int) -> None:
            self.parts = [torch.utils.data.DistributedSampler(range(n), num_replicas=2,
                                                               rank=r, shuffle=True, seed=0)
                          for r in (0, 1)]

        def set_epoch(self, epoch: int) -> None:  # Lightning calls it every epoch
            for part in self.parts:
                part.set_epoch(epoch)

        def __iter__(self):
            zero, one = (list(part) for part in self.parts)
            for i in range(0, len(zero), 16):
                yield from zero[i : i + 16]
                yield from one[i : i + 16]

        def __len__(self) -> int:
            return sum(len(part) for part in self.parts)

    data = load_data(DataConfig(name="digits", subset=320))
    ds = torch.utils.data.TensorDataset(data.x_train, data.y_train)

    def fit(out: str, strategy, tag: str, mode="store", curvature=None) -> None:
        pl.seed_everything(0, verbose=False)
        if args.single:
            loader = torch.utils.data.DataLoader(ds, batch_size=32, sampler=TwoRanks(len(ds)))
        else:
            loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
        cb = RegularityCallback(out, figures=False, timeout=60, mode=mode,
                                curvature=curvature)
        trainer = pl.Trainer(max_epochs=2, gradient_clip_val=0.5, callbacks=[cb], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu",
                             devices=1 if args.single else 2, strategy=strategy)
        losses.clear()
        trainer.fit(TwoRanksNet() if args.single else Net(), loader)
        (status / f"rank-{trainer.global_rank}.{tag}.json").write_text(json.dumps(losses))

    def fsdp2():
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)

    try:
        if args.single:
            fit(args.out, "auto", "single")
            fit(args.fsdp2_sketch, "auto", "single-sketch", sketch_mode())
        else:
            fit(args.out, "ddp", "ddp")
        if args.fsdp2:
            fit(args.fsdp2, fsdp2(), "fsdp2")
        if args.fsdp2_sketch and not args.single:
            fit(args.fsdp2_sketch, fsdp2(), "fsdp2-sketch", sketch_mode())
        if args.curvature:
            fit(args.curvature, "auto" if args.single else "ddp",
                "single-curvature" if args.single else "curvature", curvature=CURVATURE)
    except BaseException as exc:  # noqa: BLE001 - the test reads how every rank ended
        rank = int(os.environ.get("LOCAL_RANK", 0))
        (status / f"rank-{rank}").write_text(f"error: {type(exc).__name__}: {exc}\n")
        raise SystemExit(1) from exc
    (status / f"rank-{os.environ.get('LOCAL_RANK', 0)}").write_text("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
