"""A tiny rank for launcher tests: a few DDP steps on a linear model, then (unless
``--plain``) ``clean_shutdown`` and ``exit_rank``; ``--plain`` just returns, as a bare
script would."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trajreg.distributed.process import clean_shutdown, die_with_parent, exit_rank

    die_with_parent()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if "--plain" not in argv:
        clean_shutdown()
        exit_rank(0)  # as the worker leaves
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
