"""Distributed runs: one run trained on N processes (DDP or FSDP2), one run directory.

``train: {distributed: {strategy: ddp|fsdp, nproc: N, backend: gloo|nccl}}`` in a run
config (or ``trajreg run CONFIG --nproc N``) makes ``trajreg run`` launch N ranks with
torch.distributed's launcher. Each rank takes its contiguous part of every global batch
(``data.batch_size`` is the global batch size). Under DDP rank 0 records the trajectory
as a single process would; under FSDP2 every rank records its own shard and the
per-step quantities are sums of per-rank partial sums. See docs/distributed.md.

``run`` runs any config (one process, or N when it says so): ``trajreg.run`` and the
``trajreg run`` command call it. Modules: ``launch`` (the launching process, ``run``),
``agent`` (torch.distributed's elastic agent), ``worker`` (one rank), ``train`` (the
loop on a rank), ``measure`` (rank 0's measuring context: F evaluated as the ranks
evaluate it), ``process`` (start and orderly end of a rank), ``ranks`` (the rank
protocol of a session: one code path for one process and for many). The sharded
trajectory and its exact measurement belong to the record modes
(``trajreg.record.shards``).
Importing this package imports neither torch.distributed nor the launcher.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DistributedRunError", "run", "run_distributed", "with_nproc"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trajreg.distributed import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
