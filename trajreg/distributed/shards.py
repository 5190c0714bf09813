"""Store mode under FSDP2: each rank writes its own shard of x_t; the per-step quantities
are sums of per-rank partial sums.

FSDP2 (``fully_shard``) splits every parameter along dim 0 into ``world`` chunks
(``torch.chunk``'s sizes, the last ones shorter or empty), so rank r's entries of a
parameter are one contiguous run of the global flat vector x (the concatenation of
every parameter, in the optimizer's order, as ``trajreg.record.recorder.flat_params``
lays it out in a single process). Rank r's recorder writes the concatenation of its
local shards (``Recorder`` takes a DTensor's ``to_local()``), a vector of d_r entries,
to its own trajectory store; the runs of the global index it covers are its *ranges*.

Layout under the run's ``trajectory/``::

    shards.json     {"format", "d", "world", "shards": [{"rank", "dir", "d", "ranges"}]}
    rank-00000/     a trajectory store (trajreg.record.store) of rank 0's d_0 entries
    rank-00001/     ... one per rank; sum of d_r = d, the ranges tile [0, d) exactly once

Record mode ``sample`` is sharded the same way: every rank keeps the same steps and
``rank-NNNNN/`` holds an ordinary sample (x.bin, sample.json) of its entries.

Why the sums are exact: D_t = ||x_t - x*||^2, a_t = <x_t - x*, x_t - x_{t+1}> / eta_t and
s_t = ||x_t - x_{t+1}||^2 / eta_t^2 are sums over coordinates, the ranks' coordinate sets
partition [0, d), and every rank's eta_t is the same; so D_t = sum_r D_t^r and so on,
where D_t^r is the same formula over rank r's entries against rank r's entries of x*.
Each partial sum is ``trajectory_quantities`` in float64 over that rank's rows, exactly
as store mode computes the whole; only the order of the float64 additions differs
(relative differences of order 1e-16). ``measure_shards`` does this in one process
after training, reading one rank's store at a time, so memory stays O(d_r) per block
plus O(d) for x* (which the evaluation model holds anyway).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajreg.errors import DamagedRun
from trajreg.principle import trajectory_quantities
from trajreg.record.measured import Measured
from trajreg.record.modes.base import MeasureContext
from trajreg.record.modes.sample import SampleMode, SampleStore
from trajreg.record.modes.store import TRAJECTORY, StoreMode, stream_quantities
from trajreg.record.store import TrajectoryStore

SHARDS = "shards.json"
FORMAT = "trajreg-shards/1"


def shard_dir(rank: int) -> str:
    """The directory of rank ``rank``'s store under ``trajectory/``."""
    return f"rank-{rank:05d}"


def is_sharded(trajectory: Path) -> bool:
    """Whether a run's ``trajectory/`` holds per-rank shards (an FSDP2 store run)."""
    return (Path(trajectory) / SHARDS).is_file()


def local_ranges(params: Sequence[Any], rank: int, world: int) -> tuple[list[list[int]], int]:
    """Rank ``rank``'s runs of the global flat index, in the order of its local flat
    vector, as ``[start, length]`` pairs (adjacent runs merged), and the global d.

    A DTensor parameter must be sharded on dim 0 of a 1-D mesh (FSDP2's layout); its
    local shard is checked against the chunk this computes. A plain tensor is held
    whole by every rank (a rank that holds every parameter: DDP)."""
    ranges: list[list[int]] = []
    offset = 0
    for p in params:
        numel = p.numel()
        if hasattr(p, "to_local"):
            placements = tuple(p.placements)
            if (len(placements) != 1 or not placements[0].is_shard()
                    or placements[0].dim != 0):
                raise NotImplementedError(f"a parameter placed as {placements}: only dim-0 "
                                          "sharding on a 1-D mesh (FSDP2's) is recorded")
            n0 = p.shape[0]
            row = numel // n0 if n0 else 0
            chunk = math.ceil(n0 / world)
            start = min(rank * chunk, n0)
            stop = min(start + chunk, n0)
            local = p.to_local()
            if tuple(local.shape) != (stop - start, *p.shape[1:]):
                raise RuntimeError(f"rank {rank}: local shard of shape {tuple(local.shape)}, "
                                   f"expected rows [{start}, {stop}) of {tuple(p.shape)}")
            begin, length = offset + start * row, (stop - start) * row
        else:
            begin, length = offset, numel
        if length:
            if ranges and ranges[-1][0] + ranges[-1][1] == begin:
                ranges[-1][1] += length
            else:
                ranges.append([begin, length])
        offset += numel
    return ranges, offset


def write_index(trajectory: Path, d: int, shards: list[dict]) -> None:
    """``trajectory/shards.json`` from every rank's ``{"rank", "dir", "d", "ranges"}``."""
    shards = sorted(shards, key=lambda s: s["rank"])
    payload = {"format": FORMAT, "d": int(d), "world": len(shards), "shards": shards}
    check_index(payload, Path(trajectory) / SHARDS)
    path = Path(trajectory) / SHARDS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def check_index(meta: Any, path: Path) -> None:
    """The index is well formed: the ranks 0..world-1 once each, and their ranges tile
    [0, d) exactly once (``DamagedRun`` naming the file otherwise)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DamagedRun(f"{path}: not a {FORMAT} index")
    d, shards = meta.get("d"), meta.get("shards")
    if not isinstance(d, int) or d < 1 or not isinstance(shards, list) or not shards:
        raise DamagedRun(f"{path}: key 'd' or 'shards' missing or invalid")
    if [s.get("rank") for s in shards] != list(range(len(shards))) or meta.get(
            "world") != len(shards):
        raise DamagedRun(f"{path}: the shards are not ranks 0..world-1")
    covered = []
    for s in shards:
        ranges = s.get("ranges")
        if (not isinstance(s.get("dir"), str) or "/" in s["dir"] or s["dir"] in ("", ".", "..")
                or not isinstance(ranges, list)
                or not all(isinstance(r, list) and len(r) == 2 for r in ranges)
                or sum(r[1] for r in ranges) != s.get("d")):
            raise DamagedRun(f"{path}: shard of rank {s.get('rank')} is not a valid entry")
        covered += [tuple(r) for r in ranges]
    covered.sort()
    end = 0
    for start, length in covered:
        if start != end or length < 1:
            raise DamagedRun(f"{path}: the shards' ranges do not cover [0, {d}) exactly once")
        end = start + length
    if end != d:
        raise DamagedRun(f"{path}: the shards' ranges do not cover [0, {d}) exactly once")


class ShardedTrajectory:
    """Read access to a sharded ``trajectory/``: the index and every rank's store.

    Opening checks the index and that the stores agree (rows, learning rates, widths);
    ``verify()`` also checks every store's sidecar, closing and checksums.
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        meta = read_index(self.dir)
        self.meta = meta
        self.d: int = meta["d"]
        self.world: int = meta["world"]
        self.shards: list[dict] = meta["shards"]
        self.stores = [TrajectoryStore(self.dir / s["dir"]) for s in self.shards]
        for s, store in zip(self.shards, self.stores, strict=True):
            if store.d != s["d"]:
                raise DamagedRun(f"{store.dir}: {store.d} entries a row, the index says "
                                 f"{s['d']}")
        rows = {store.rows for store in self.stores}
        if len(rows) != 1:
            raise DamagedRun(f"{self.dir}: the ranks' stores hold different numbers of "
                             f"iterates ({sorted(rows)})")
        self.rows: int = rows.pop()
        self.steps: int = self.stores[0].steps
        self.closed = all(store.closed for store in self.stores)
        lrs = self.stores[0].lrs
        for store in self.stores[1:]:
            if not np.array_equal(store.lrs, lrs):
                raise DamagedRun(f"{store.dir}: its learning rates differ from rank 0's")
        self.lrs = lrs

    def verify(self, n_steps: int | None = None, checksums: bool = True) -> None:
        """Every rank's store closed, holding ``n_steps + 1`` iterates, its data matching
        its checksums (``DamagedRun`` naming the file)."""
        for store in self.stores:
            sidecar = store.dir / "trajectory.json"
            if not store.closed:
                raise DamagedRun(f"{sidecar}: not closed (recording did not finish)")
            if n_steps is not None and store.rows < n_steps + 1:
                raise DamagedRun(f"{sidecar}: holds {store.rows} iterates, the run took "
                                 f"{n_steps} steps")
            if checksums:
                store.verify()

    def row(self, t: int) -> np.ndarray:
        """The whole iterate x_t (d entries), assembled from the ranks' rows (after
        training: what the evaluation model is loaded with)."""
        return assemble(self.meta, [store.row(t) for store in self.stores])

    def quantities(self, T: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]:
        """D, a, s and eta of steps 0..T-1 against x* = x_k: per rank, the partial sums
        over its entries against its entries of x_k; summed over ranks in rank order."""
        if self.rows < T + 1:
            raise RuntimeError(f"trajectory holds {self.rows} iterates, the run took {T} "
                               "steps")
        total: list[np.ndarray] | None = None
        lr = self.lrs[:T]
        for store in self.stores:
            D, a, s, lr = stream_quantities(store, T, store.row(k).astype(np.float64))
            if total is None:
                total = [D, a, s]
            else:
                total = [total[0] + D, total[1] + a, total[2] + s]
        assert total is not None
        return total[0], total[1], total[2], np.asarray(lr, dtype=np.float64)


def measure_shards(ctx: MeasureContext, k: int) -> Measured:
    """Store mode's measurement of a sharded trajectory against x* = x_k (the same
    Measured as ``StoreMode.measure`` of the unsharded run, to float64 rounding)."""
    sharded = ShardedTrajectory(Path(ctx.directory) / TRAJECTORY)
    T = ctx.steps
    D, a, s, lr = sharded.quantities(T, k)
    ctx.load(sharded.row(k))
    return Measured(steps=np.arange(T), D=D, a=a, s=s, lr=lr,
                    loss_star=ctx.step_losses(range(T)), f_star=ctx.f_star(k),
                    reference_step=k)


class ShardedStoreMode(StoreMode):
    """Store mode whose trajectory is sharded by rank (the FSDP2 layout above): during
    training each rank records its own shard with the ordinary store mode; after
    training ``measure`` sums the per-rank partial sums."""

    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        return measure_shards(ctx, k)


class ShardedSampleMode(SampleMode):
    """Sample mode whose rows are sharded by rank: every rank keeps the same steps (the
    sampler is a function of the run seed) and writes its own entries of x_t and x_{t+1}
    into ``trajectory/rank-NNNNN/`` (an ordinary sample); after training ``measure`` sums
    the per-rank partial sums of D_t, a_t, s_t at the kept steps, as for store."""

    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        traj = Path(ctx.directory) / TRAJECTORY
        index = read_index(traj)
        stores = [SampleStore(traj / s["dir"]) for s in index["shards"]]
        first = stores[0]
        for store in stores[1:]:
            if not (np.array_equal(store.kept, first.kept) and np.array_equal(
                    store.lrs, first.lrs) and np.array_equal(store.iterates, first.iterates)):
                raise DamagedRun(f"{store.dir}: its sample differs from rank 0's")
        k = self.reference(first, k, ctx)
        use = first.kept < ctx.steps  # every recorded kept step, also those after x_k
        steps, lrs = first.kept[use], first.lrs[use]
        D, a, s = (np.zeros(len(steps)) for _ in range(3))
        for store in stores:
            x_star = store.row(k).astype(np.float64)
            for i, (t, lr) in enumerate(zip(steps, lrs, strict=True)):
                q = trajectory_quantities(np.stack([store.row(t), store.row(t + 1)]), [lr],
                                          x_star)
                D[i] += q.D[0]
                a[i] += q.a[0]
                s[i] += q.s[0]
        ctx.load(assemble(index, [store.row(k) for store in stores]))
        return Measured(steps=steps, D=D, a=a, s=s, lr=lrs,
                        loss_star=ctx.step_losses(steps.tolist()), f_star=ctx.f_star(k),
                        reference_step=k)


SHARDED_MODES: dict[str, type[StoreMode | SampleMode]] = {
    "store": ShardedStoreMode, "sample": ShardedSampleMode}


def read_index(trajectory: Path) -> dict:
    """``trajectory/shards.json``, checked (``DamagedRun`` naming the file)."""
    path = Path(trajectory) / SHARDS
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedRun(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"{path}: not valid JSON ({exc})") from None
    check_index(meta, path)
    return meta


def assemble(index: dict, rows: list[np.ndarray]) -> np.ndarray:
    """The whole vector (d entries) from every rank's row, by the index's ranges."""
    x = np.empty(index["d"], dtype=rows[0].dtype)
    for shard, local in zip(index["shards"], rows, strict=True):
        pos = 0
        for start, length in shard["ranges"]:
            x[start : start + length] = local[pos : pos + length]
            pos += length
    return x


def verify_sharded(trajectory: Path, n_steps: int, checksums: bool = True) -> None:
    """``rundir.verify_run_dir``'s trajectory check for a sharded trajectory."""
    try:
        ShardedTrajectory(trajectory).verify(n_steps, checksums)
    except FileNotFoundError as exc:
        raise DamagedRun(f"run directory damaged: {exc}") from None
    except DamagedRun as exc:
        raise DamagedRun(f"run directory damaged: {exc}") from None
