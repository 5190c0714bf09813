"""Record mode ``store``: every iterate x_t to disk, measured after training.

During training each x_t is copied into a RAM buffer that a background thread
writes to preallocated ``.npy`` segments (``trajectory/``, see
``trajreg.record.store``). After training the trajectory is streamed in blocks
against any stored x_k, so both references (final, best) are re-analysed without
retraining. Memory O(d); disk O(T d). With ``gradients`` the minibatch gradient g_t
of every step goes to a second store, ``trajectory/grad/`` (one more d-row a step).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from trajreg.principle import trajectory_quantities
from trajreg.record.geometry import (
    GRADIENTS,
    measured_every_step,
    stream_gradient_quantities,
)
from trajreg.record.measured import Measured
from trajreg.record.modes.base import MeasureContext, RecordMode, foreign_sidecars
from trajreg.record.store import SIDECAR, TrajectoryStore, TrajectoryWriter, verify_store

if TYPE_CHECKING:
    from trajreg.record.recorder import Recorder

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

    def __init__(self, gradients: bool | None = None) -> None:
        self.writer: TrajectoryWriter | None = None
        self.grads: TrajectoryWriter | None = None  # g_t of every step (gradients on)
        if gradients is not None:
            self.gradients = gradients

    def open(self, rec: Recorder, directory: Path | None, *, capacity: int = 4096,
             sync_seconds: float = 5.0, **_: Any) -> None:
        if directory is None:
            raise ValueError("mode 'store' needs a directory to write the trajectory to")
        dtype = np.dtype(np.float64 if rec.dtype == torch.float64 else np.float32)
        self.writer = TrajectoryWriter(directory, rec.d, dtype, capacity, sync_seconds)
        if self.gradients:
            self.grads = TrajectoryWriter(Path(directory) / GRADIENTS, rec.d, dtype, capacity,
                                          sync_seconds)

    def pre_step(self, rec: Recorder, step: int, lr: float) -> None:
        assert self.writer is not None, "open() first"
        rec.flat(out=torch.from_numpy(self.writer.next_row()))
        self.writer.commit_row(lr)
        if self.grads is not None:  # g_t, the gradient the step is about to use
            rec.grad_flat(out=torch.from_numpy(self.grads.next_row()))
            self.grads.commit_row(lr)

    def close(self, rec: Recorder) -> None:
        if self.writer is not None and not self.writer.closed:
            rec.flat(out=torch.from_numpy(self.writer.next_row()))  # x_T
            self.writer.commit_row(None)
            self.writer.close()
        if self.grads is not None and not self.grads.closed:
            self.grads.close()

    own_files: ClassVar[tuple[str, ...]] = (SIDECAR, "shards.json")

    @classmethod
    def verify(cls, directory: Path, steps: int, checksums: bool = True) -> None:
        """The store (and with gradients ``grad/``) closed, holding x_0 .. x_T (g_0 ..
        g_{T-1}), its headers and sizes as the sidecar says and, with ``checksums``, its
        rows and learning rates against the sidecar's CRC32s; an FSDP2 run's store of
        every rank (``trajreg.distributed.shards``)."""
        from trajreg.distributed.shards import ShardedTrajectory, is_sharded

        directory = Path(directory)
        foreign_sidecars(cls, directory)
        if is_sharded(directory):  # an FSDP2 run: one store per rank
            sharded = ShardedTrajectory(directory)
            for store in sharded.stores:
                foreign_sidecars(cls, store.dir)
            sharded.verify(steps, checksums)
            return
        verify_store(directory, steps + 1, checksums)
        if (directory / GRADIENTS).exists():  # gradients: g_0 .. g_{T-1}, T rows
            verify_store(directory / GRADIENTS, steps, checksums, "gradients", steps)

    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        from trajreg.distributed.shards import is_sharded, measure_shards

        if is_sharded(Path(ctx.directory) / TRAJECTORY):  # FSDP2: one store per rank
            return measure_shards(ctx, k)
        store = TrajectoryStore(Path(ctx.directory) / TRAJECTORY)
        if store.rows < ctx.steps + 1:
            raise RuntimeError(f"trajectory holds {store.rows} iterates, "
                               f"the run took {ctx.steps} steps")
        T = ctx.steps  # every recorded step, also those after x* = x_k
        x_star = store.row(k)
        D, a, s, lr = stream_quantities(store, T, x_star.astype(np.float64))
        columns = {}
        grads = Path(ctx.directory) / TRAJECTORY / GRADIENTS
        if (grads / SIDECAR).is_file():  # recorded with gradients
            columns["g_dot"], columns["g_norm2"] = stream_gradient_quantities(
                store, TrajectoryStore(grads), T, x_star.astype(np.float64))
        return measured_every_step(ctx, k, D=D, a=a, s=s, lr=lr, columns=columns,
                                   x0=store.row(0), x_star=x_star)
