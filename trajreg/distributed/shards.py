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
``rank-NNNNN/`` holds an ordinary sample (x.bin, sample.json) of its entries. Record
mode ``sketch`` too: every rank sketches its entries with the hash of their GLOBAL flat
indices (``RangesCountSketch``), so the sum over ranks of the per-rank sketch rows is the
sketch of the whole vector (S is linear; ``CombinedRows``), and keeps its check sample.

With ``record.gradients`` every rank also records its entries of g_t (store: a
``grad/`` store; sample: ``g.bin``; sketch: S g_t of its entries and ||g_t^r||^2), and
g_dot_t = <g_t, x_t - x*>, g_norm2_t = ||g_t||^2 are sums of per-rank partial sums, as
D_t is. The path length sum_t ||u_t|| needs ||u_t||^2 summed over ranks before the
square root: it is computed from the summed s_t (store, sketch) or the summed per-rank
``su.bin`` (sample).

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajreg.errors import DamagedRun
from trajreg.principle import gradient_quantities, trajectory_quantities
from trajreg.record.geometry import (
    GRADIENTS,
    endpoint_summary,
    measured_every_step,
    read_step_norms,
    stream_gradient_quantities,
)
from trajreg.record.measured import Measured
from trajreg.record.modes.base import MeasureContext, read_sidecar_json
from trajreg.record.modes.sample import STEP_NORMS, SampleMode, SampleStore
from trajreg.record.modes.sketch import (
    G_FILE,
    GRAD_SKETCHES,
    S_FILE,
    SKETCHES,
    SketchMode,
    TorchCountSketch,
    hash_seed,
    measure_sketched,
)
from trajreg.record.modes.store import TRAJECTORY, StoreMode, stream_quantities
from trajreg.record.store import SIDECAR, TrajectoryStore, overlapping_blocks

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
        """Every rank's store (and gradient store, recorded with gradients) closed,
        holding ``n_steps + 1`` iterates (``n_steps`` gradients), its data matching its
        checksums (``DamagedRun`` naming the file)."""
        for store in self.stores:
            checked = [(store, 1)]
            if (store.dir / GRADIENTS).is_dir():
                checked.append((TrajectoryStore(store.dir / GRADIENTS), 0))
            for one, extra in checked:
                sidecar = one.dir / SIDECAR
                if not one.closed:
                    raise DamagedRun(f"{sidecar}: not closed (recording did not finish)")
                if n_steps is not None and one.rows < n_steps + extra:
                    what = "iterates" if extra else "gradients"
                    raise DamagedRun(f"{sidecar}: holds {one.rows} {what}, the run took "
                                     f"{n_steps} steps")
                if checksums:
                    one.verify()

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
    Measured as ``StoreMode.measure`` of the unsharded run, to float64 rounding):
    D, a, s and, recorded with gradients, g_dot and g_norm2 summed over ranks; the path
    ratio from the summed s_t; the interpolation from x_0 to x* (assembled)."""
    sharded = ShardedTrajectory(Path(ctx.directory) / TRAJECTORY)
    T = ctx.steps
    D, a, s, lr = sharded.quantities(T, k)
    columns: dict[str, np.ndarray] = {}
    grads = [store.dir / GRADIENTS for store in sharded.stores]
    if all((g / SIDECAR).is_file() for g in grads):  # recorded with gradients
        g_dot, g_norm2 = np.zeros(T), np.zeros(T)
        for store, g in zip(sharded.stores, grads, strict=True):
            part = stream_gradient_quantities(store, TrajectoryStore(g), T,
                                              store.row(k).astype(np.float64))
            g_dot += part[0]
            g_norm2 += part[1]
        columns = {"g_dot": g_dot, "g_norm2": g_norm2}
    return measured_every_step(ctx, k, D=D, a=a, s=s, lr=lr, columns=columns,
                               x0=sharded.row(0), x_star=sharded.row(k))


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
        index, stores = read_samples(traj)
        first = stores[0]
        k = self.reference(first, k, ctx)
        use = first.kept < ctx.steps  # every recorded kept step, also those after x_k
        steps, lrs = first.kept[use], first.lrs[use]
        D, a, s = (np.zeros(len(steps)) for _ in range(3))
        gradients = all(store.gradients for store in stores)
        g_dot, g_norm2 = np.zeros(len(steps)), np.zeros(len(steps))
        for store in stores:
            x_star = store.row(k).astype(np.float64)
            for i, (t, lr) in enumerate(zip(steps, lrs, strict=True)):
                q = trajectory_quantities(np.stack([store.row(t), store.row(t + 1)]), [lr],
                                          x_star)
                D[i] += q.D[0]
                a[i] += q.a[0]
                s[i] += q.s[0]
                if gradients:
                    g = gradient_quantities(store.row(t)[None], store.grad(t)[None], x_star)
                    g_dot[i] += g.g_dot[0]
                    g_norm2[i] += g.g_norm2[0]
        columns = {"g_dot": g_dot, "g_norm2": g_norm2} if gradients else {}
        x_star = assemble(index, [store.row(k) for store in stores])
        ctx.load(x_star)
        loss_star, f_star = ctx.step_losses(steps.tolist()), ctx.f_star(k)
        summary = {}
        norms = [store.dir / STEP_NORMS for store in stores]
        if all(path.is_file() for path in norms):  # ||u_t||^2 summed over ranks, then sqrt
            s_u = summed(norms, k)
            summary = endpoint_summary(ctx, k, assemble(index, [st.row(0) for st in stores]),
                                       x_star, np.sqrt(s_u))
        return Measured(steps=steps, D=D, a=a, s=s, lr=lrs, loss_star=loss_star,
                        f_star=f_star, reference_step=k, columns=columns, summary=summary)


def read_samples(traj: Path) -> tuple[dict, list[SampleStore]]:
    """The index and every rank's sample (sample mode, or sketch mode's check sample),
    checked to keep the same steps, learning rates and iterates."""
    index = read_index(traj)
    stores = [SampleStore(traj / s["dir"]) for s in index["shards"]]
    first = stores[0]
    for store in stores[1:]:
        if not (np.array_equal(store.kept, first.kept) and np.array_equal(
                store.lrs, first.lrs) and np.array_equal(store.iterates, first.iterates)
                and store.gradients == first.gradients):
            raise DamagedRun(f"{store.dir}: its sample differs from rank 0's")
    return index, stores


class RangesCountSketch(TorchCountSketch):
    """S x of a rank's flat vector whose entries are the runs ``ranges`` of the global flat
    index (``[start, length]`` pairs, in the vector's order, as ``local_ranges`` gives
    them): one ``TorchCountSketch`` per run, at its global offset, their sketches added
    in float64. Every coordinate is hashed by its global index, so the sum over ranks of
    their sketches is the sketch of the whole vector (``trajreg.principle.countsketch``
    of x), up to the order of the float64 additions in each bucket."""

    def __init__(self, ranges: Sequence[Sequence[int]], k: int, seed: int,
                 device: torch.device | str = "cpu", tmp: torch.Tensor | None = None) -> None:
        # no TorchCountSketch.__init__: the runs' sketches hold the buckets and signs
        self.k, self.seed = int(k), int(seed)
        self.d = sum(int(n) for _, n in ranges)
        self.offset = int(ranges[0][0]) if ranges else 0
        self.parts: list[tuple[int, int, TorchCountSketch]] = []
        pos = 0
        for start, n in ranges:
            scratch = None if tmp is None else tmp[pos : pos + int(n)]
            self.parts.append((pos, int(n), TorchCountSketch(int(n), self.k, self.seed, device,
                                                             offset=int(start), tmp=scratch)))
            pos += int(n)
        self._part = torch.empty(self.k, dtype=torch.float64, device=device)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            out = torch.empty(self.k, dtype=torch.float64, device=x.device)
        flat = x.reshape(-1)
        if not self.parts:
            return out.zero_()
        for i, (pos, n, sketch) in enumerate(self.parts):
            if i == 0:
                sketch(flat[pos : pos + n], out=out)
            else:
                sketch(flat[pos : pos + n], out=self._part)
                out.add_(self._part)
        return out


class CombinedRows:
    """The rows of the ranks' stores (``TrajectoryStore``s of equal rows and learning
    rates) as the whole run's rows: summed over ranks in rank order, in float64 (the
    sketches: S x = sum_r S x^r), or, with ``assemble``, put together by the index's
    ranges (S = I: every rank kept its entries of x). What the measurement reads of a
    ``TrajectoryStore``: ``rows``, ``d``, ``lrs``, ``row``, ``read``, ``blocks``."""

    def __init__(self, index: dict, stores: list[TrajectoryStore], assemble: bool) -> None:
        self.index, self.stores, self.assemble = index, stores, assemble
        rows = {store.rows for store in stores}
        if len(rows) != 1:
            raise DamagedRun(f"{stores[0].dir.parent.parent}: the ranks' stores hold different "
                             f"numbers of rows ({sorted(rows)})")
        self.rows: int = rows.pop()
        self.lrs = stores[0].lrs
        for store in stores[1:]:
            if not np.array_equal(store.lrs, self.lrs):
                raise DamagedRun(f"{store.dir}: its learning rates differ from rank 0's")
            if not assemble and store.d != stores[0].d:
                raise DamagedRun(f"{store.dir}: {store.d} entries a row, rank 0's {stores[0].d}")
        self.d: int = index["d"] if assemble else stores[0].d

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of the whole run."""
        parts = [store.read(start, stop) for store in self.stores]
        if self.assemble:
            out = np.empty((stop - start, self.d), dtype=parts[0].dtype)
            for shard, local in zip(self.index["shards"], parts, strict=True):
                pos = 0
                for begin, length in shard["ranges"]:
                    out[:, begin : begin + length] = local[:, pos : pos + length]
                    pos += length
            return out
        total = parts[0].astype(np.float64, copy=True)
        for part in parts[1:]:
            total += part
        return total

    def row(self, t: int) -> np.ndarray:
        return self.read(t, t + 1)[0]

    def blocks(self, stop: int, block_rows: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """``TrajectoryStore.blocks``: ``(t0, rows t0..t0+n)``, overlapping by one row."""
        return overlapping_blocks(self.read, self.rows, stop, block_rows)


class ShardedSketchMode(SketchMode):
    """Sketch mode on a shard: during training (``shard(ranges, d)`` first) the rank's
    recorder holds its entries of x, whose global flat indices are ``ranges``; S = I
    and ``record.sketch_dim`` are decided on the whole d, and S is ``RangesCountSketch``,
    so every rank's rows are its part of the whole sketch. Every rank keeps the same
    check steps (a function of the run seed). After training ``measure`` sums the
    ranks' sketch rows (S = I: assembles them) and their s_t, ||g_t||^2 and the check
    sample's partial sums, then measures as ``SketchMode.measure`` does."""

    ranges: list[list[int]] | None = None
    total: int | None = None

    def shard(self, ranges: Sequence[Sequence[int]], d: int) -> ShardedSketchMode:
        """This rank's runs of the global flat index (``local_ranges``) and the global d."""
        self.ranges, self.total = [[int(a), int(b)] for a, b in ranges], int(d)
        return self

    def sketched_d(self, rec: Any) -> int:
        return rec.d if self.total is None else self.total

    def count_sketch(self, d: int, device: torch.device) -> TorchCountSketch:
        if self.ranges is None:
            return super().count_sketch(d, device)
        return RangesCountSketch(self.ranges, self.k, hash_seed(self.sampler.seed), device,
                                 tmp=self._diff)

    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        traj = Path(ctx.directory) / TRAJECTORY
        index, samples = read_samples(traj)
        dirs = [traj / shard["dir"] for shard in index["shards"]]
        k = self.reference(samples[0], k, ctx)  # the exact x* is needed for l_t(x*)
        identity = bool(samples[0].meta.get("identity"))
        T = ctx.steps
        sketches = CombinedRows(index, [TrajectoryStore(d / SKETCHES) for d in dirs], identity)
        grads = None
        if all((d / GRAD_SKETCHES / SIDECAR).is_file() for d in dirs):  # with gradients
            grads = (CombinedRows(index, [TrajectoryStore(d / GRAD_SKETCHES) for d in dirs],
                                  identity),
                     summed([d / G_FILE for d in dirs], T))  # ||g_t||^2: partial sums added
        # s_t: the ranks' partial sums added; CombinedRows reads as a TrajectoryStore does
        return measure_sketched(
            ctx, k, sketches, summed([d / S_FILE for d in dirs], T), grads, samples,
            x0=assemble(index, [sample.row(0) for sample in samples]),
            x_star=assemble(index, [sample.row(k) for sample in samples]).astype(np.float64))


def summed(paths: Sequence[Path], count: int) -> np.ndarray:
    """The sum over ranks, in rank order, of the first ``count`` float64 values of each
    rank's file (``read_step_norms``: per-rank partial sums of s_t, ||g_t||^2 or
    ||u_t||^2, each a sum over the rank's entries)."""
    total = np.zeros(count)
    for path in paths:
        total += read_step_norms(path, count)
    return total


SHARDED_MODES: dict[str, type[StoreMode | SampleMode]] = {
    "store": ShardedStoreMode, "sample": ShardedSampleMode, "sketch": ShardedSketchMode}


def read_index(trajectory: Path) -> dict:
    """``trajectory/shards.json``, checked (``DamagedRun`` naming the file)."""
    path = Path(trajectory) / SHARDS
    meta = read_sidecar_json(path)
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
