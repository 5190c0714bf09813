"""Record mode ``store``: every iterate x_t to disk, measured after training.

During training each x_t is copied into a RAM buffer that a background thread
writes to preallocated ``.npy`` segments (``trajectory/``, see
``trajreg.record.store``). After training the trajectory is streamed in blocks
against any stored x_k, so both references (final, best) are re-analysed without
retraining. Memory O(d); disk O(T d). With ``gradients`` the minibatch gradient g_t
of every step goes to a second store, ``trajectory/grad/`` (one more d-row a step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from trajreg.principle import trajectory_quantities
from trajreg.record.geometry import (
    GRADIENTS,
    measured_every_step,
    stream_gradient_quantities,
)
from trajreg.record.measured import Measured
from trajreg.record.modes.base import (
    MeasureContext,
    Recording,
    RecordMode,
    foreign_sidecars,
    gradients_option,
)
from trajreg.record.shards import SHARDS, Parts, Shard
from trajreg.record.store import SIDECAR, TrajectoryStore, TrajectoryWriter, verify_store

TRAJECTORY = "trajectory"


def stream_quantities(store: TrajectoryStore, T: int, x_star: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """D_0..D_{T-1}, a, s and eta of the first T stored steps against ``x_star``,
    streamed in ~8 MiB float64 blocks, so memory stays O(d) and the blocks stay
    cache-friendly."""
    if store.rows < T + 1:
        raise RuntimeError(f"trajectory holds {store.rows} iterates, the run took {T} steps")
    lrs = store.lrs[:T]
    D: list[float] = []
    a: list[float] = []
    s: list[float] = []
    block_rows = max(1, min(256, (8 << 20) // (8 * store.d)))
    for t0, xs in store.blocks(T, block_rows=block_rows):
        q = trajectory_quantities(xs, lrs[t0 : t0 + len(xs) - 1], x_star)
        D.extend(q.D[:-1])
        a.extend(q.a)
        s.extend(q.s)
    return np.asarray(D), np.asarray(a), np.asarray(s), np.asarray(lrs, dtype=np.float64)


class StoreMode(RecordMode):
    name = "store"
    reanalyse: ClassVar[tuple[str, ...]] = ("final", "best")
    cost = "memory O(d); disk T*d floats"
    keeps_trajectory: ClassVar[bool] = True
    shardable: ClassVar[bool] = True

    def __init__(self, gradients: bool | None = None) -> None:
        self.writer: TrajectoryWriter | None = None
        self.grads: TrajectoryWriter | None = None  # g_t of every step (gradients on)
        if gradients is not None:
            self.gradients = gradients

    def open(self, rec: Recording, directory: Path | None, *, shard: Shard | None = None,
             capacity: int = 4096, sync_seconds: float = 5.0, **_: Any) -> None:
        if directory is None:
            raise ValueError("mode 'store' needs a directory to write the trajectory to")
        dtype = np.dtype(np.float64 if rec.dtype == torch.float64 else np.float32)
        self.writer = TrajectoryWriter(directory, rec.d, dtype, capacity, sync_seconds)
        if self.gradients:
            self.grads = TrajectoryWriter(Path(directory) / GRADIENTS, rec.d, dtype, capacity,
                                          sync_seconds)

    def pre_step(self, rec: Recording, step: int, lr: float) -> None:
        assert self.writer is not None, "open() first"
        rec.flat(out=torch.from_numpy(self.writer.next_row()))
        self.writer.commit_row(lr)
        if self.grads is not None:  # g_t, the gradient the step is about to use
            rec.grad_flat(out=torch.from_numpy(self.grads.next_row()))
            self.grads.commit_row(lr)

    def close(self, rec: Recording) -> None:
        if self.writer is not None and not self.writer.closed:
            rec.flat(out=torch.from_numpy(self.writer.next_row()))  # x_T
            self.writer.commit_row(None)
            self.writer.close()
        if self.grads is not None and not self.grads.closed:
            self.grads.close()

    own_files: ClassVar[tuple[str, ...]] = (SIDECAR, SHARDS)

    @classmethod
    def verify(cls, directory: Path, steps: int, checksums: bool = True) -> None:
        """The store (and with gradients ``grad/``) closed, holding x_0 .. x_T (g_0 ..
        g_{T-1}), its headers and sizes as the sidecar says and, with ``checksums``, its
        rows and learning rates against the sidecar's CRC32s; of an FSDP2 run, every
        rank's store, the stores alike (``trajreg.record.shards``)."""
        directory = Path(directory)
        foreign_sidecars(cls, directory)
        parts = Parts(directory)
        for part in parts.dirs:
            if parts.sharded:
                foreign_sidecars(cls, part)
            verify_store(part, steps + 1, checksums)
            if (part / GRADIENTS).exists():  # gradients: g_0 .. g_{T-1}, T rows
                verify_store(part / GRADIENTS, steps, checksums, "gradients", steps)
        parts.rows()  # an FSDP2 run's stores alike: rows, learning rates, widths

    @classmethod
    def rows(cls, directory: Path) -> Callable[[int], np.ndarray | None]:
        return Parts(directory).rows().row

    @classmethod
    def disk_bytes(cls, cfg: Any, d: int, steps: int, row_bytes: int) -> int:
        """x_0 .. x_T, and with gradients g_t of every step."""
        return row_bytes * (steps + 1) * (2 if gradients_option(cls, cfg) else 1)

    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        """D, a, s (and with gradients g_dot, g_norm2) of every step against x_k, as sums
        over the trajectory's parts (one, or an FSDP2 run's ranks) of each part's
        partial sums against its entries of x_k."""
        parts = Parts(Path(ctx.directory) / TRAJECTORY)
        whole = parts.rows()  # checks an FSDP2 run's stores alike
        T = ctx.steps  # every recorded step, also those after x* = x_k
        if whole.rows < T + 1:
            raise RuntimeError(f"trajectory holds {whole.rows} iterates, "
                               f"the run took {T} steps")
        D = a = s = g_dot = g_norm2 = None
        lr = np.asarray(whole.lrs[:T], dtype=np.float64)
        gradients = all((part / GRADIENTS / SIDECAR).is_file() for part in parts.dirs)
        for part in parts.dirs:
            store = TrajectoryStore(part)
            x_star = store.row(k).astype(np.float64)  # this part's entries of x_k
            q = stream_quantities(store, T, x_star)[:3]
            D, a, s = q if D is None else (D + q[0], a + q[1], s + q[2])
            if gradients:
                g = stream_gradient_quantities(store, TrajectoryStore(part / GRADIENTS), T,
                                               x_star)
                g_dot, g_norm2 = g if g_dot is None else (g_dot + g[0], g_norm2 + g[1])
        assert D is not None and a is not None and s is not None
        columns = {} if g_dot is None else {"g_dot": g_dot, "g_norm2": g_norm2}
        return measured_every_step(ctx, k, D=D, a=a, s=s, lr=lr, columns=columns,
                                   x0=whole.row(0), x_star=whole.row(k))
