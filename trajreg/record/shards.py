"""A trajectory recorded in shards: each process holds a part of x (FSDP2).

FSDP2 (``fully_shard``) splits every parameter along dim 0 into ``world`` chunks
(``torch.chunk``'s sizes, the last ones shorter or empty), so rank r's entries of a
parameter are one contiguous run of the global flat vector x (the concatenation of
every parameter, in the optimizer's order, as ``trajreg.record.recorder.flat_params``
lays it out in a single process). Rank r's recorder holds the concatenation of its
local shards (a DTensor's ``to_local()``), d_r entries; the runs of the global index
it covers are its *ranges* (a ``Shard``), which the record mode is given at ``open``.

Layout under the run's ``trajectory/``::

    shards.json     {"format", "d", "world", "shards": [{"rank", "dir", "d", "ranges"}]}
    rank-00000/     what the record mode writes for rank 0's d_0 entries
    rank-00001/     ... one per rank; sum of d_r = d, the ranges tile [0, d) exactly once

A trajectory recorded in one process has no index: it is one part, ``trajectory/``
itself, holding all of x. ``Parts`` reads both layouts alike, so a record mode measures
a sharded run with the code that measures a whole one.

Why sums over parts are exact: D_t = ||x_t - x*||^2, a_t = <x_t - x*, x_t - x_{t+1}> /
eta_t and s_t = ||x_t - x_{t+1}||^2 / eta_t^2 (and g_dot_t, ||g_t||^2, ||u_t||^2) are
sums over coordinates, the ranks' coordinate sets partition [0, d), and every rank's
eta_t is the same; so D_t = sum_r D_t^r, where D_t^r is the same formula over rank r's
entries against rank r's entries of x*. Only the order of the float64 additions differs
from a whole run's (relative differences of order 1e-16). A CountSketch is linear, so a
rank that hashes its entries by their GLOBAL index sketches its part of S x, and the
ranks' sketch rows add up to the sketch of the whole vector.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajreg.errors import DamagedRun
from trajreg.record.store import (
    TrajectoryStore,
    overlapping_blocks,
    read_sidecar_json,
    read_step_norms,
)

SHARDS = "shards.json"
FORMAT = "trajreg-shards/1"


def shard_dir(rank: int) -> str:
    """The directory of rank ``rank``'s part under ``trajectory/``."""
    return f"rank-{rank:05d}"


def is_sharded(trajectory: Path) -> bool:
    """Whether a run's ``trajectory/`` holds per-rank parts (an FSDP2 run)."""
    return (Path(trajectory) / SHARDS).is_file()


@dataclass(frozen=True)
class Shard:
    """The entries of the global flat vector x that one process holds: ``ranges``, runs
    of the global index as ``(start, length)`` pairs in the order of the process's local
    flat vector, and ``d``, the length of x. A record mode given a shard at ``open``
    records the local vector; the sketch hashes its entries by their global index."""

    rank: int
    world: int
    ranges: tuple[tuple[int, int], ...]
    d: int

    @property
    def local_d(self) -> int:
        return sum(n for _, n in self.ranges)

    @property
    def dir(self) -> str:
        return shard_dir(self.rank)

    def entry(self) -> dict[str, Any]:
        """This shard's entry in ``shards.json``."""
        return {"rank": self.rank, "dir": self.dir, "d": self.local_d,
                "ranges": [[a, n] for a, n in self.ranges]}

    @classmethod
    def of(cls, params: Sequence[Any], rank: int, world: int, *, check: bool = True) -> Shard:
        """Rank ``rank``'s shard of the parameters ``params`` (the optimizer's, in its
        order): a DTensor parameter must be sharded on dim 0 of a 1-D mesh (FSDP2's
        layout), its entries the ``torch.chunk`` rows of rank ``rank``; a plain tensor is
        held whole by every rank. ``check``: compare this process's local shards with the
        computed rows (only the process that holds them can)."""
        ranges: list[list[int]] = []
        offset = 0
        for p in params:
            numel = p.numel()
            if hasattr(p, "to_local"):
                placements = tuple(p.placements)
                if (len(placements) != 1 or not placements[0].is_shard()
                        or placements[0].dim != 0):
                    raise NotImplementedError(f"a parameter placed as {placements}: only "
                                              "dim-0 sharding on a 1-D mesh (FSDP2's) is "
                                              "recorded")
                n0 = p.shape[0]
                row = numel // n0 if n0 else 0
                chunk = math.ceil(n0 / world)
                start = min(rank * chunk, n0)
                stop = min(start + chunk, n0)
                if check:
                    local = p.to_local()
                    if tuple(local.shape) != (stop - start, *p.shape[1:]):
                        raise RuntimeError(f"rank {rank}: local shard of shape "
                                           f"{tuple(local.shape)}, expected rows [{start}, "
                                           f"{stop}) of {tuple(p.shape)}")
                begin, length = offset + start * row, (stop - start) * row
            else:
                begin, length = offset, numel
            if length:
                if ranges and ranges[-1][0] + ranges[-1][1] == begin:
                    ranges[-1][1] += length
                else:
                    ranges.append([begin, length])
            offset += numel
        return cls(int(rank), int(world), tuple((a, n) for a, n in ranges), offset)


def write_index(trajectory: Path, d: int, shards: list[dict]) -> None:
    """``trajectory/shards.json`` from every rank's ``{"rank", "dir", "d", "ranges"}``."""
    shards = sorted(shards, key=lambda s: s["rank"])
    payload = {"format": FORMAT, "d": int(d), "world": len(shards), "shards": shards}
    path = Path(trajectory) / SHARDS
    check_index(payload, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def write_shard_index(trajectory: Path, params: Sequence[Any], world: int) -> None:
    """The index of every rank's shard of ``params``, as any one rank computes it from
    the parameters' global shapes (written by one rank: no collective)."""
    every = [Shard.of(params, r, world, check=False) for r in range(world)]
    write_index(trajectory, every[0].d, [s.entry() for s in every])


def check_index(meta: Any, path: Path) -> None:
    """The index is well formed: the ranks 0..world-1 once each, and their ranges tile
    [0, d) exactly once (``DamagedRun`` naming the file otherwise)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DamagedRun(f"{path}: not a {FORMAT} index")
    d, shards = meta.get("d"), meta.get("shards")
    if not isinstance(d, int) or d < 1 or not isinstance(shards, list) or not shards:
        raise DamagedRun(f"{path}: key 'd' or 'shards' missing or invalid")
    if not all(isinstance(s, dict) for s in shards) or [s.get("rank") for s in shards] != list(
            range(len(shards))) or meta.get("world") != len(shards):
        raise DamagedRun(f"{path}: the shards are not ranks 0..world-1")
    covered = []
    for s in shards:
        ranges = s.get("ranges")
        if (not isinstance(s.get("dir"), str) or "/" in s["dir"] or s["dir"] in ("", ".", "..")
                or not isinstance(ranges, list)
                or not all(isinstance(r, list) and len(r) == 2
                           and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
                           for r in ranges)
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


def read_index(trajectory: Path) -> dict:
    """``trajectory/shards.json``, checked (``DamagedRun`` naming the file)."""
    path = Path(trajectory) / SHARDS
    meta = read_sidecar_json(path)
    check_index(meta, path)
    return meta


class Parts:
    """Where a trajectory's rows are: ``dirs``, one directory per part (``trajectory/``
    itself for a run recorded in one process; ``trajectory/rank-NNNNN/`` of every rank
    for an FSDP2 run), and how to put the parts' rows together into whole vectors.
    The row source every record mode measures and verifies through."""

    def __init__(self, trajectory: str | Path) -> None:
        self.trajectory = Path(trajectory)
        self.index: dict | None = read_index(self.trajectory) if is_sharded(
            self.trajectory) else None
        self.dirs: list[Path] = ([self.trajectory] if self.index is None else
                                 [self.trajectory / s["dir"] for s in self.index["shards"]])

    @property
    def sharded(self) -> bool:
        return self.index is not None

    def assemble(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """The whole vector from every part's row (one part: its row, as it is)."""
        if self.index is None:
            return rows[0]
        return assemble(self.index, list(rows))

    def summed(self, name: str, count: int) -> np.ndarray:
        """The sum over parts, in rank order, of the first ``count`` float64 values of
        each part's file ``name`` (per-part partial sums of s_t, ||g_t||^2 or ||u_t||^2;
        one part: its values)."""
        total = read_step_norms(self.dirs[0] / name, count)
        for d in self.dirs[1:]:
            total = total + read_step_norms(d / name, count)
        return total

    def rows(self, name: str | None = None, *, assemble: bool = True
             ) -> TrajectoryStore | CombinedRows:
        """The trajectory stores ``name`` (None: the parts' directories themselves) as
        the whole run's rows: one part's store as it is, or the parts' stores put
        together by their ranges (``assemble``: every rank kept its entries of x) or
        summed (sketches of the parts: S x = sum_r S x^r)."""
        stores = [TrajectoryStore(d if name is None else d / name) for d in self.dirs]
        return stores[0] if self.index is None else CombinedRows(self.index, stores,
                                                                   assemble)


class CombinedRows:
    """The rows of the ranks' stores (``TrajectoryStore``s of equal rows and learning
    rates) as the whole run's rows: summed over ranks in rank order, in float64 (the
    sketches: S x = sum_r S x^r), or, with ``assemble``, put together by the index's
    ranges (every rank kept its entries of x). What the measurement reads of a
    ``TrajectoryStore``: ``rows``, ``d``, ``lrs``, ``steps``, ``row``, ``read``,
    ``blocks``."""

    def __init__(self, index: dict, stores: list[TrajectoryStore], assemble: bool) -> None:
        self.index, self.stores, self.assemble = index, stores, assemble
        rows = {store.rows for store in stores}
        if len(rows) != 1:
            raise DamagedRun(f"{stores[0].dir.parent}: the ranks' stores hold different "
                             f"numbers of rows ({sorted(rows)})")
        self.rows: int = rows.pop()
        self.steps: int = stores[0].steps
        self.lrs = stores[0].lrs
        for shard, store in zip(index["shards"], stores, strict=True):
            if not np.array_equal(store.lrs, self.lrs):
                raise DamagedRun(f"{store.dir}: its learning rates differ from rank 0's")
            if assemble and store.d != shard["d"]:
                raise DamagedRun(f"{store.dir}: {store.d} entries a row, the index says "
                                 f"{shard['d']}")
            if not assemble and store.d != stores[0].d:
                raise DamagedRun(f"{store.dir}: {store.d} entries a row, rank 0's "
                                 f"{stores[0].d}")
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


def assemble(index: dict, rows: list[np.ndarray]) -> np.ndarray:
    """The whole vector (d entries) from every rank's row, by the index's ranges."""
    x = np.empty(index["d"], dtype=rows[0].dtype)
    for shard, local in zip(index["shards"], rows, strict=True):
        pos = 0
        for start, length in shard["ranges"]:
            x[start : start + length] = local[pos : pos + length]
            pos += length
    return x


def put_local(params: Sequence[Any], shard: Shard, x: np.ndarray,
              local: Callable[[Any], Any]) -> None:
    """Copy this process's entries of the whole vector ``x`` (its ``shard``) into the
    local parts ``local(p)`` of ``params``, in place."""
    import torch

    parts = [x[start : start + length] for start, length in shard.ranges]
    flat = torch.from_numpy(np.concatenate(parts) if parts else np.asarray(x)[:0])
    offset = 0
    with torch.no_grad():
        for p in params:
            part = local(p)
            n = part.numel()
            part.copy_(flat[offset : offset + n].view_as(part))
            offset += n
