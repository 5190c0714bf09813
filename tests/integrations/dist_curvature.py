"""RegularitySession(curvature=...) in a hand-written DDP loop on 2 CPU processes, for
test_curvature_ddp.py: ``python -m torch.distributed.run --standalone --nproc_per_node 2
dist_curvature.py TMP`` writes TMP/ddp; ``python dist_curvature.py --single TMP`` writes
TMP/single, the same training in one process (dist_plain.py's single-process reference:
each step's minibatch both ranks' micro-batches, its loss their mean). Every process
writes how it ended to TMP/<name>-<rank>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_plain import train  # noqa: E402 - the script's own directory

CURVATURE = {"rate": 0.5, "iterations": 20}


def net_and_data(torch, ranks):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                              torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    data = []
    for rank in ranks:  # each rank's part, as the DDP run draws it
        g = torch.Generator().manual_seed(100 + rank)
        data += [torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)]
    return net, data


def main() -> int:
    import torch

    from trajreg.integrations import RegularitySession

    torch.set_num_threads(1)
    if sys.argv[1] == "--single":
        tmp, name, rank = Path(sys.argv[2]), "single", 0
        net, data = net_and_data(torch, (0, 1))

        def loss_fn(model, batch):  # dist_plain.py's: the two ranks' losses' mean
            x0, y0, x1, y1 = batch
            state = torch.get_rng_state()
            loss0 = torch.nn.functional.cross_entropy(model(x0), y0)
            torch.set_rng_state(state)
            loss1 = torch.nn.functional.cross_entropy(model(x1), y1)
            return (loss0.double() + loss1.double()) / 2

        model = net
    else:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        tmp, name = Path(sys.argv[1]), "ddp"
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        net, data = net_and_data(torch, (rank,))

        def loss_fn(model, batch):
            return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

        model = DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    session = RegularitySession(tmp / name, source="plain", figures=False, mode="store",
                                timeout=60.0, curvature=CURVATURE)
    try:
        train(session, net, model, opt, loss_fn, data)
        summary = session.finish(net, loss_fn)
        outcome = ["ok", summary.n_steps]
    except Exception as exc:  # noqa: BLE001 - the test reads how each rank ended
        outcome = [f"error: {type(exc).__name__}: {exc}"]
    (tmp / f"{name}-{rank}.json").write_text(json.dumps(outcome))
    if name == "ddp":
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
