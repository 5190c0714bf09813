"""RegularitySession in a hand-written DDP loop on 2 CPU processes, for
test_distributed_callbacks.py: ``python -m torch.distributed.run --standalone
--nproc_per_node 2 dist_plain.py TMP``. It runs several sessions one after the other in
the same process group, each ending one way, and every rank writes how each ended to
``TMP/rank-N.json`` ({scenario: [outcome, seconds]}):

- ``store``, ``sample``: a complete DDP run each (TMP/store, TMP/sample);
- ``fsdp-store``, ``fsdp-sample``: the same runs under FSDP2 (``fully_shard``);
- ``follower``: one of rank 1's micro-batch files is damaged before ``finish``;
- ``leader``: rank 0's measurement raises;
- ``hang``: rank 1 stops answering (sleeps) before ``finish``; the session's timeout
  is 2 s there (elsewhere 60 s: a rank waits while rank 0 alone measures and writes).
  Last: it leaves the process group unusable.

``python dist_plain.py --single TMP`` is the single-process reference of the ``store``
and ``sketch`` runs (TMP/single-store, TMP/single-sketch; how each ended in
TMP/single.json): the same training in one process, no process group. Each step's
minibatch is both ranks' micro-batches, and its loss their mean, each micro-batch's
forward pass as on its rank (with the random state every rank starts the step with:
both ranks draw the same dropout masks), so the gradient is the ranks' reduced one:
each micro-batch's gradient halved (exact) and the two added (one addition, as the
2-rank reduction). The trajectory is then the DDP and FSDP2 runs' bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TIMEOUT = 60.0  # the session's timeout; the hang's is HANG
HANG = 2.0


def sketch_mode():  # the sketch runs' mode, a fresh one each
    """k = 64 < d = 195; about half the steps checked exactly (a_exact, D_exact)."""
    from trajreg.record.modes.sketch import SketchMode

    return SketchMode(dim=64, seed=7, check_rate=0.5, check_min_steps=0)


def train(session, net, model, opt, loss_fn, data) -> None:
    """Two epochs of micro-batches of 16 rows of every tensor of ``data``, one step each,
    told to ``session`` (``net`` the module, ``model`` it wrapped for training)."""
    session.start(net, opt)
    for _ in range(2):
        for i in range(0, 96, 16):
            batch = tuple(t[i : i + 16] for t in data)
            session.before_batch()
            loss = loss_fn(model, batch)
            session.after_batch(batch, loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        session.end_epoch()


def single(tmp: Path) -> int:
    """The single-process reference (see the module's docstring)."""
    import torch

    from trajreg.integrations import RegularitySession

    torch.set_num_threads(1)
    results: dict[str, list] = {}

    def loss_fn(model, batch):
        """The mean of the two ranks' micro-batch losses, each drawn from the random
        state both ranks start from; in float64, as the session adds the ranks' losses
        (the float32 mean is up to an ulp off: b_t 3e-6 relative). The gradient is
        float32's: the casts pass the factor 1/2 back unchanged."""
        x0, y0, x1, y1 = batch
        state = torch.get_rng_state()
        loss0 = torch.nn.functional.cross_entropy(model(x0), y0)
        torch.set_rng_state(state)
        loss1 = torch.nn.functional.cross_entropy(model(x1), y1)
        return (loss0.double() + loss1.double()) / 2

    def run(name: str, mode) -> None:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                  torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        data = []
        for rank in (0, 1):  # each rank's part, as dist_plain's run draws it
            g = torch.Generator().manual_seed(100 + rank)
            data += [torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)]
        session = RegularitySession(tmp / name, source="plain", figures=False, mode=mode)
        try:
            train(session, net, net, opt, loss_fn, data)
            summary = session.finish(net, loss_fn)
            outcome = ["ok", summary.n_steps, summary.loss_check]
        except Exception as exc:  # noqa: BLE001 - the test reads how it ended
            outcome = [f"error: {type(exc).__name__}: {exc}"]
        results[name] = outcome
        (tmp / "single.json").write_text(json.dumps(results))

    run("single-store", "store")
    run("single-sketch", sketch_mode())
    return 0


def main() -> int:
    if sys.argv[1] == "--single":
        return single(Path(sys.argv[2]))
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from trajreg.integrations import RegularitySession
    from trajreg.record.modes.sample import SampleMode

    torch.set_num_threads(1)
    tmp = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results: dict[str, list] = {}

    def loss_fn(model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    def run(name: str, mode="store", before_finish=None, timeout=TIMEOUT,
            fsdp=False) -> None:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                  torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
        if fsdp:
            for layer in (net[0], net[3]):
                fully_shard(layer)
            model = fully_shard(net)
        else:
            model = DistributedDataParallel(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own part
        x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
        session = RegularitySession(tmp / name, source="plain", figures=False, mode=mode,
                                    timeout=timeout)
        start = time.monotonic()
        try:
            train(session, net, model, opt, loss_fn, [x, y])
            if before_finish is not None:
                before_finish(session)
            summary = session.finish(net, loss_fn)
            outcome = ["ok", summary.n_steps, summary.loss_check]
        except Exception as exc:  # noqa: BLE001 - the test reads how each rank ended
            outcome = [f"error: {type(exc).__name__}: {exc}"]
        results[name] = [*outcome, time.monotonic() - start]
        (tmp / f"rank-{rank}.json").write_text(json.dumps(results))

    def damage_a_batch(session):
        if rank == 1:
            with open(session.tmp / "batches" / "batches.bin", "r+b") as log:
                log.seek(session.batches.log.index[3][0])  # micro-batch 3's record
                log.write(b"damaged")

    def measuring_fails(session):
        if rank == 0:
            def measure(ctx, k):
                x = torch.cat([p.detach().reshape(-1) for p in ctx.model.parameters()]).numpy()
                ctx.load(x)  # the other rank is serving the measurement now
                raise RuntimeError("injected failure while measuring")
            session.mode.measure = measure

    def hang(session):
        if rank == 1:
            time.sleep(2 * HANG)

    run("store")
    run("sample", mode=SampleMode(rate=0.5, seed=1))
    run("fsdp-store", fsdp=True)
    run("fsdp-sample", mode=SampleMode(rate=0.5, seed=1), fsdp=True)
    # d = 195 > k = 64: hashed; the FSDP2 session's rank sketches must add up to the whole
    # vector's (each entry hashed by its global flat index)
    run("sketch", mode=sketch_mode())
    run("fsdp-sketch", mode=sketch_mode(), fsdp=True)
    run("follower", before_finish=damage_a_batch)
    run("leader", before_finish=measuring_fails)
    run("hang", before_finish=hang, timeout=HANG)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the hang left the process group unusable: no orderly teardown


if __name__ == "__main__":
    sys.exit(main())
