"""On-disk trajectory: preallocated ``.npy`` memmaps plus a JSON sidecar.

Layout of a trajectory directory::

    trajectory.json      sidecar: d, dtype, valid rows/steps, segments, closed
    x-0000.npy           (capacity, d) iterates x_t, one row per optimizer step
    lr-0000.npy          (capacity,) the learning rate eta_t of step t
    x-0001.npy ...       further segments when a run outgrows the first

The sidecar is the source of truth: rows beyond its counts are never read, so a
crash can lose at most the steps since the last sidecar write, never corrupt it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SIDECAR = "trajectory.json"
FORMAT = "trajreg-trajectory/1"


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class TrajectoryWriter:
    """Appends rows x_t (and eta_t) to segment memmaps; memory stays O(d)."""

    def __init__(self, directory: str | Path, d: int, dtype: np.dtype | str = np.float32,
                 capacity: int = 4096, sync_seconds: float = 5.0) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / SIDECAR).exists():
            raise FileExistsError(f"{self.dir} already holds a trajectory; refusing to overwrite")
        self.d = int(d)
        self.dtype = np.dtype(dtype)
        self.capacity = max(1, int(capacity))
        self.sync_seconds = sync_seconds
        self.segments: list[dict] = []
        self.rows = 0  # valid x rows
        self.steps = 0  # valid lr entries
        self._x: np.memmap | None = None
        self._lr: np.memmap | None = None
        self._last_sync = time.monotonic()
        self.closed = False
        self._sync()

    def _open_segment(self) -> None:
        self._flush()
        k = len(self.segments)
        xf, lf = f"x-{k:04d}.npy", f"lr-{k:04d}.npy"
        self._x = np.lib.format.open_memmap(self.dir / xf, mode="w+", dtype=self.dtype,
                                            shape=(self.capacity, self.d))
        self._lr = np.lib.format.open_memmap(self.dir / lf, mode="w+", dtype=np.float64,
                                             shape=(self.capacity,))
        self.segments.append({"x": xf, "lr": lf, "rows": 0, "steps": 0})

    def next_row(self) -> np.ndarray:
        """The writable memmap row that will hold the next iterate (x_{rows})."""
        seg_row = self.rows % self.capacity
        if seg_row == 0:
            self._open_segment()
        return self._x[seg_row]

    def commit_row(self, lr: float | None) -> None:
        """Mark the row from ``next_row`` as written; ``lr`` is eta_t of the step it starts."""
        seg_row = self.rows % self.capacity
        seg = self.segments[-1]
        if lr is not None:
            if self.steps != self.rows:
                raise RuntimeError("a step learning rate follows a row without one")
            self._lr[seg_row] = lr
            self.steps += 1
            seg["steps"] += 1
        self.rows += 1
        seg["rows"] += 1
        if time.monotonic() - self._last_sync > self.sync_seconds:
            self._sync()

    def _flush(self) -> None:
        if self._x is not None:
            self._x.flush()
            self._lr.flush()

    def _sync(self) -> None:
        self._flush()
        _write_json_atomic(self.dir / SIDECAR, {
            "format": FORMAT, "d": self.d, "dtype": self.dtype.str, "capacity": self.capacity,
            "rows": self.rows, "steps": self.steps, "segments": self.segments,
            "closed": self.closed,
        })
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self.closed = True
        self._sync()
        self._x = self._lr = None


class TrajectoryStore:
    """Read access to a trajectory directory written by ``TrajectoryWriter``."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        path = self.dir / SIDECAR
        if not path.is_file():
            raise FileNotFoundError(f"no trajectory at {self.dir} (missing {SIDECAR})")
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown trajectory format {meta.get('format')!r}")
        self.meta = meta
        self.d: int = meta["d"]
        self.rows: int = meta["rows"]
        self.steps: int = meta["steps"]
        self.capacity: int = meta["capacity"]
        self.closed: bool = meta["closed"]
        self._x = [np.load(self.dir / s["x"], mmap_mode="r") for s in meta["segments"]]
        self._lr = [np.load(self.dir / s["lr"], mmap_mode="r") for s in meta["segments"]]

    @property
    def lrs(self) -> np.ndarray:
        """eta_t for every recorded step, shape (steps,)."""
        parts = [lr[: s["steps"]] for lr, s in zip(self._lr, self.meta["segments"], strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def row(self, t: int) -> np.ndarray:
        if not 0 <= t < self.rows:
            raise IndexError(f"row {t} outside the {self.rows} recorded iterates")
        return np.asarray(self._x[t // self.capacity][t % self.capacity])

    def blocks(self, stop: int, block_rows: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t0, xs)`` with xs = rows t0..t0+n (inclusive), consecutive blocks
        overlapping by one row, covering rows 0..stop. Each block is at most
        ``block_rows + 1`` rows, so memory stays bounded."""
        if not 0 < stop < self.rows:
            raise IndexError(f"stop {stop} outside 1..{self.rows - 1}")
        t0 = 0
        while t0 < stop:
            t1 = min(stop, t0 + block_rows)
            yield t0, self._slice(t0, t1 + 1)
            t0 = t1

    def _slice(self, start: int, stop: int) -> np.ndarray:
        parts = []
        while start < stop:
            k, r = divmod(start, self.capacity)
            n = min(stop - start, self.capacity - r)
            parts.append(self._x[k][r : r + n])
            start += n
        return np.concatenate(parts)
