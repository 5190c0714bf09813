"""Record mode ``sketch``: a CountSketch of every iterate, exact s_t, one pass.

For every step the mode keeps S x_t, a CountSketch of k numbers (``record.sketch_dim``)
of the flat parameter vector, computed on the parameters' device with the hash recipe
of ``trajreg.principle.sketch`` (``hash_buckets``/``hash_signs``) reproduced in torch
int64: bucket and sign of every coordinate are computed once, from its GLOBAL flat
index, so the sketch of a vector split into shards is the sum of the shards' sketches.
s_t = ||x_t - x_{t+1}||^2 / eta_t^2 is exact, computed online in float64 from the kept
x_t (memory O(d)). After training, D_t and a_t are estimated from the sketches
(``sketch_quantities``: unbiased, relative error about sqrt(1 + 1/c_t^2) / sqrt(k)),
and b_t is exact at every step (l_t at x* on step t's own minibatch).

The mode checks itself on an exact sample of steps (rate min(1, max(
``record.sketch_sample_rate``, ``record.sketch_check_steps`` / T)), fixed by ``plan``;
stored as mode ``sample`` stores its sample): metrics.parquet gets ``a_exact`` and
``D_exact`` (NaN off the sample), summary.json ``sketch_error`` (median relative error
of a_t and D_t, and the error of gamma_hat itself on the check steps of the window,
``trajreg.principle.onepass_summary``) and the exact sample's intervals (``gamma_hat_ci``, ...).

A model with d <= k parameters is not sketched: the mode keeps x_t itself (S = I, exact,
d floats of the params' precision a step, as store mode); without an explicit
``sketch_dim`` neither is one with d <= 2 k (``default_dim``: its float32 rows take no
more disk than the sketch). An explicit ``sketch_dim`` above d is an error.

With ``gradients`` (the default) the mode also keeps S g_t of every step's gradient, with
the same hash (``trajectory/sketch-grad/``, k numbers a step), ||g_t||^2 exactly
(``g2.bin``), and g_t itself on the check sample: g_dot_t = <g_t, x_t - x*> is estimated
as <S g_t, S x_t - S x*> (unbiased), g_norm2_t is exact, and ``g_dot_exact`` is exact on
the check sample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from trajreg.errors import ConfigError, DamagedRun
from trajreg.principle import gradient_quantities, sketch_quantities, trajectory_quantities
from trajreg.principle.sketch import STREAM_BUCKET, STREAM_SIGN
from trajreg.record.geometry import (
    SquaredNorms,
    StagedRows,
    block_rows,
    measured_every_step,
    stream_gradient_quantities,
)
from trajreg.record.measured import Measured
from trajreg.record.modes.base import MeasureContext, Recording, RecordMode, gradients_option
from trajreg.record.modes.sample import (
    GRADS,
    ROWS,
    SKETCHES,  # trajectory/sketch/: S x_0 .. S x_T, a float64 row each, and eta_t
    STREAM_CHECK,
    TRAJECTORY,
    SampleMode,
    SampleStore,
    check_sample,
    check_sizes,
    effective_rate,
    read_samples,
)
from trajreg.record.modes.sample import SIDECAR as SAMPLE_SIDECAR
from trajreg.record.shards import Parts, Shard
from trajreg.record.store import SIDECAR, TrajectoryStore, TrajectoryWriter, verify_store

# gamma_hat(0.05) within 10% of the exact value in 78 of 80 cases on nets of 1.6e5 to
# 1.2e6 parameters, 22 of 24 in the hard regime (plain SGD at a large step: a small
# gamma against a_t / b_t), where 8192 gave 15 of 24 (docs/record-modes.md, 2026-12-06)
DEFAULT_DIM = 16384
# Fewest exactly checked steps of a run of known length: sketch_error's gamma-level
# figure compares two gamma_hat(0.05) of the check steps in the window; with 64 window
# steps it raised 0-6% false alarms in the measurements, with 16 up to 29% (docs)
DEFAULT_CHECK_STEPS = 100

S_FILE = "s.bin"  # trajectory/s.bin: s_t of every step, float64
GRAD_SKETCHES = "sketch-grad"  # trajectory/sketch-grad/: S g_0 .. S g_{T-1} (gradients on)
G_FILE = "g2.bin"  # trajectory/g2.bin: ||g_t||^2 of every step, float64 (gradients on)
_M32 = 0xFFFFFFFF
# Entries cast to float64 at a time by a sketch and by the mode's one pass over x_t and
# g_t: its float64 chunks (three of 512 KiB) stay in cache, and its dozen torch calls a
# chunk cost a few tenths of a ns a parameter (2^18 measured no faster, 2^20 slower:
# out of cache); on an accelerator ``DEVICE_CHUNK``, where the calls, not the memory, cost
CHUNK = 1 << 16
DEVICE_CHUNK = 1 << 22


def default_dim(d: int) -> int:
    """k for a model of d parameters when ``record.sketch_dim`` is not given: DEFAULT_DIM,
    or d itself (S = I, exact) when d <= 2 DEFAULT_DIM, where a float32 row of x_t takes
    no more disk than a float64 sketch of DEFAULT_DIM numbers."""
    return d if d <= 2 * DEFAULT_DIM else DEFAULT_DIM


def _mul32(x: Any, m: int) -> Any:
    """(x m) mod 2^32 for 0 <= x, m < 2^32 with every intermediate below 2^49, so the
    same expression is exact on Python ints and on int64 tensors."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: Any) -> Any:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def torch_hash32(index: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """``trajreg.principle.sketch.hash32`` on an int64 tensor of non-negative global
    flat indices (any device): int64 values in [0, 2^32), equal to numpy's."""
    key = _mix32(_mix32(int(seed)) ^ int(stream))
    key2 = _mix32(key ^ (index >> 32))
    return _mix32(key2 ^ (index & _M32))


def torch_buckets(index: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Bucket in [0, k) of each global flat index (``hash_buckets``), int64."""
    return (torch_hash32(index, seed, STREAM_BUCKET) * int(k)) >> 32


def torch_signs(index: torch.Tensor, seed: int) -> torch.Tensor:
    """Sign in {+1, -1} of each global flat index (``hash_signs``), int8."""
    return (1 - 2 * (torch_hash32(index, seed, STREAM_SIGN) >> 31)).to(torch.int8)


class TorchCountSketch:
    """S x for flat vectors of d entries whose first has global index ``offset``.

    The bucket and sign of every coordinate are computed once, in chunks, on ``device``,
    and kept folded into one index (``index``: bucket h(i), or k + h(i) where sigma(i) =
    -1; int32 when 2 k fits, 4 bytes a parameter to read): a sketch is then a
    ``scatter_add_`` of the entries, in float64, into 2 k sums, and S x = positives -
    negatives. Entries (and their index, to int64) are cast to float64 a chunk of
    ``CHUNK`` at a time (exact: every float32 is a float64), so nothing of d entries is
    written in float64 and the chunk stays in cache. Each bucket is summed
    in float64 in index order, positives and negatives apart: the result equals
    ``trajreg.principle.countsketch(x, k, seed, offset)`` to float64 rounding, |error|
    <= n_j 2^-52 sum_{h(i)=j} |x_i| in bucket j of n_j entries (bit for bit when every
    partial sum is exact).
    """

    def __init__(self, d: int, k: int, seed: int, device: torch.device | str = "cpu",
                 offset: int = 0, chunk: int = 1 << 20) -> None:
        self.d, self.k, self.seed, self.offset = int(d), int(k), int(seed), int(offset)
        self.index = self._fold([(self.offset, self.d)], device, chunk)

    def _fold(self, ranges: Sequence[Sequence[int]], device: torch.device | str,
              chunk: int) -> torch.Tensor:
        """The folded index of the global flat indices of the runs ``ranges`` ((start,
        length) pairs), in their order."""
        dtype = torch.int32 if 2 * self.k <= 2**31 - 1 else torch.int64
        index = torch.empty(sum(int(n) for _, n in ranges), dtype=dtype, device=device)
        pos = 0
        for start, n in ranges:
            for i in range(0, int(n), chunk):
                m = min(chunk, int(n) - i)
                idx = torch.arange(int(start) + i, int(start) + i + m, dtype=torch.int64,
                                   device=device)
                neg = torch_hash32(idx, self.seed, STREAM_SIGN) >> 31  # sigma = -1
                index[pos : pos + m] = torch_buckets(idx, self.k, self.seed) + self.k * neg
                pos += m
        return index

    def accumulator(self, device: torch.device | str) -> torch.Tensor:
        """The 2 k float64 sums that ``add`` adds into and ``finish`` turns into S x."""
        return torch.zeros(2 * self.k, dtype=torch.float64, device=device)

    def chunk_index(self, pos: int, out: torch.Tensor) -> torch.Tensor:
        """The folded index of entries pos .. pos + len(out) - 1 into ``out`` (int64, as
        ``scatter_add_`` takes it: measured 0.5 ns an entry against ``index_add_``'s 0.85
        with an int32 index)."""
        return out.copy_(self.index[pos : pos + len(out)])

    @staticmethod
    def add(acc: torch.Tensor, index: torch.Tensor, x64: torch.Tensor) -> None:
        """A chunk's entries, in float64, into ``acc`` at their ``chunk_index``."""
        acc.scatter_add_(0, index, x64)

    def finish(self, acc: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """S x into ``out`` (k numbers, any float dtype) from the sums, which it zeroes."""
        if out.device == acc.device:
            torch.sub(acc[: self.k], acc[self.k :], out=out)
        else:  # a host row of sums on an accelerator (not staged)
            out.copy_(acc[: self.k] - acc[self.k :])
        acc.zero_()
        return out

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The sketch of the flat vector x (float64, shape (k,)), into ``out`` if given."""
        if out is None:
            out = torch.empty(self.k, dtype=torch.float64, device=x.device)
        flat = x.reshape(-1)
        acc = self.accumulator(x.device)
        tmp = torch.empty(min(CHUNK, self.d), dtype=torch.float64, device=x.device)
        idx = torch.empty(len(tmp), dtype=torch.int64, device=x.device)
        for i in range(0, self.d, CHUNK):
            n = min(CHUNK, self.d - i)
            self.add(acc, self.chunk_index(i, idx[:n]), tmp[:n].copy_(flat[i : i + n]))
        return self.finish(acc, out)


class RangesCountSketch(TorchCountSketch):
    """S x of a process's flat vector whose entries are the runs ``ranges`` of the global
    flat index (``(start, length)`` pairs in the vector's order: a ``Shard``'s). Every
    coordinate is hashed by its global index, so the sum over ranks of their sketches is
    the sketch of the whole vector (``trajreg.principle.countsketch`` of x), up to the
    order of the float64 additions in each bucket."""

    def __init__(self, ranges: Sequence[Sequence[int]], k: int, seed: int,
                 device: torch.device | str = "cpu", chunk: int = 1 << 20) -> None:
        self.k, self.seed = int(k), int(seed)
        self.d = sum(int(n) for _, n in ranges)
        self.offset = int(ranges[0][0]) if ranges else 0
        self.index = self._fold(ranges, device, chunk)


def hash_seed(seed: int) -> int:
    """The sketch's hash seed in [0, 2^32), derived from the run seed."""
    return int(np.random.SeedSequence([int(seed), 5]).generate_state(1)[0])


class SketchMode(SampleMode):
    name = "sketch"
    reanalyse: ClassVar[tuple[str, ...]] = ("final",)
    cost = ("memory O(d); disk k float64 a step (the sketches), plus the exact check "
            "sample (about 2 R d floats a step)")
    # set by open, released (None) by close
    _diff: torch.Tensor | None
    _snorms: SquaredNorms | None
    _chunks: torch.Tensor | None  # hashed: (3, chunk) float64, x_t, x_{t-1}, g_t
    _chunk_index: torch.Tensor | None  # hashed: a chunk's folded index, int64
    _sq: torch.Tensor | None  # hashed: s_{t-1} eta^2 and ||g_t||^2 of the last pass
    _sums: list[torch.Tensor]  # hashed: the 2 k sums of S x_t and of S g_t
    _partials: list[tuple[torch.Tensor, list[torch.Tensor]]]  # per-chunk norms, 0-d views

    def __init__(self, dim: int | None = None, check_rate: float = 0.02, seed: int = 0,
                 stage: bool | None = None, gradients: bool | None = None,
                 check_min_steps: int = DEFAULT_CHECK_STEPS) -> None:
        """``dim``: k (None: ``default_dim(d)``); ``check_rate`` and ``check_min_steps``:
        the exact check sample keeps each step with probability
        min(1, max(check_rate, check_min_steps / T)) once planned (``plan``). ``stage``:
        sketch into a block of 64 rows on the device and copy the block to the host when
        full (None: on accelerators only; on the CPU each sketch goes straight into the
        writer's buffer)."""
        super().__init__(rate=check_rate, seed=seed, stream=STREAM_CHECK, gradients=gradients,
                         min_steps=check_min_steps)
        self.dim = dim
        self.stage = stage
        self.k = 0  # the sketch size in use (set by open)
        self.identity = False
        self.sketch: TorchCountSketch | None = None
        self._xstage: StagedRows | None = None  # S x_t into trajectory/sketches/

    @classmethod
    def from_config(cls, cfg: Any = None, seed: int = 0) -> SketchMode:
        if cfg is None:
            return cls(seed=seed)
        return cls(dim=cfg.sketch_dim, check_rate=cfg.sketch_sample_rate, seed=seed,
                   gradients=getattr(cfg, "gradients", None),
                   check_min_steps=getattr(cfg, "sketch_check_steps", DEFAULT_CHECK_STEPS))

    def keep(self, step: int) -> bool:
        return True  # b_t at every step: every minibatch is measured

    def count_sketch(self, d: int, device: torch.device,
                     shard: Shard | None) -> TorchCountSketch:
        """S for the recorder's flat vector of d entries: global indices 0..d-1, or a
        shard's entries' global indices (so the ranks' sketches add up to the whole's)."""
        seed = hash_seed(self.sampler.seed)
        if shard is None:
            return TorchCountSketch(d, self.k, seed, device)
        return RangesCountSketch(shard.ranges, self.k, seed, device)

    def plan(self, steps: int | None, analysis: Any, *,
             words: Mapping[str, str] | None = None) -> None:
        """Refuse a reference other than the final iterate and fix the check sample's rate
        at min(1, max(check_rate, check_min_steps / steps)); with the steps unknown, the
        plain check rate and a warning (a check sample too small to see the sketch's
        error in gamma_hat)."""
        RecordMode.plan(self, steps, analysis, words=words)
        self._check_reference(analysis)
        self._set_rate(steps)
        if steps is None:
            w = self.words
            warnings.warn(f"the number of steps is unknown ({w['steps']}), so mode "
                          f"{self.name} checks its sketch exactly on each step with "
                          f"probability {self.rate:g} ({w['check_rate']}) however short the "
                          f"run, and sketch_error's gamma-level figure may rest on a few "
                          f"steps. Give {w['steps']} to check at least {self.min_steps} "
                          f"steps ({w['check_min_steps']}), or raise {w['check_rate']}",
                          UserWarning, stacklevel=2)

    # ------------------------------------------------------------ during training
    def open(self, rec: Recording, directory: Path | None, *, shard: Shard | None = None,
             capacity: int = 4096, sync_seconds: float = 5.0, **options: Any) -> None:
        d = rec.d
        # S = I and the sketch_dim check are decided on the whole vector, also by a
        # recorder that holds a shard of it
        total = d if shard is None else shard.d
        if self.dim is not None and self.dim > total:
            raise ConfigError(f"record.sketch_dim: {self.dim} is more than the model's {total} "
                              "parameters (use record.mode store for an exact trajectory)")
        super().open(rec, directory, **options)
        assert directory is not None and self.writer is not None and self._x is not None
        k = default_dim(total) if self.dim is None else self.dim
        self.identity = total <= k  # a sketch no smaller than x: keep x itself
        self.k = d if self.identity else k
        device = rec.params[0].device
        self._bufs = [self._x, torch.empty_like(self._x)]
        # S = I: s_t and ||g_t||^2 after training, from the rows, on a shared d-vector;
        # hashed: in ``_pass``, a chunk at a time, with nothing of d float64s
        self._diff = torch.empty(d, dtype=torch.float64, device=device) if self.identity else None
        if not self.identity:
            self.sketch = self.count_sketch(d, device, shard)
            chunk = min(CHUNK if device.type == "cpu" else DEVICE_CHUNK, max(1, d))
            self._chunks = torch.empty((3, chunk), dtype=torch.float64, device=device)
            self._chunk_index = torch.empty(chunk, dtype=torch.int64, device=device)
            self._sums = [self.sketch.accumulator(device) for _ in range(2)]  # S x_t, S g_t
            parts = torch.zeros((2, -(-d // chunk)), dtype=torch.float64, device=device)
            # per-chunk squared norms (0-d views made once) and their totals
            self._partials = [(row, list(row)) for row in parts]
            self._sq = torch.zeros(2, dtype=torch.float64, device=device)
        self._lr_prev = math.nan
        self._dir = Path(directory)
        # s_t = ||x_t - x_{t+1}||^2 / eta_t^2, in float64 (exact from float32 rows); with
        # S = I after training (``_norms_from_rows``), else online
        self._snorms = SquaredNorms(Path(directory) / S_FILE, d, device, scratch=self._diff)
        staged = device.type != "cpu" if self.stage is None else self.stage
        # S = I keeps x_t in the params' precision, as store mode does
        row_dtype = self._x.dtype if self.identity else torch.float64
        file_dtype = self.writer.dtype if self.identity else np.float64

        def staged_rows(name: str) -> StagedRows:
            writer = TrajectoryWriter(Path(directory) / name, self.k, file_dtype, capacity,
                                      sync_seconds)
            return StagedRows(writer, self.k, row_dtype, device, staged)

        self._xstage = staged_rows(SKETCHES)
        self._gstage: StagedRows | None = None
        if self.gradients:  # S g_t with the same hash, ||g_t||^2 exactly
            self._g = None if self.identity else torch.empty_like(self._x)  # S = I: the row
            self._gnorms = SquaredNorms(Path(directory) / G_FILE, d, device, scratch=self._diff)
            self._gstage = staged_rows(GRAD_SKETCHES)

    def _pass(self, x: torch.Tensor, prev: torch.Tensor | None,
              g: torch.Tensor | None) -> None:
        """One pass over x = x_t (with ``prev`` = x_{t-1}, and g = g_t when given), a
        chunk at a time: each chunk cast to float64 (exact), added into the sums of S x_t
        (and S g_t), ||x_{t-1} - x_t||^2 (and ||g_t||^2) a partial sum a chunk, their
        totals into ``_sq``. Every float64 intermediate is a chunk's, still in cache
        when the next operation reads it: in memory, each vector is read once."""
        assert self.sketch is not None and self._chunks is not None and self._sq is not None
        assert self._chunk_index is not None
        sk, chunks, (sx, sg) = self.sketch, self._chunks, self._sums
        (ps, p_slots), (pg, g_slots) = self._partials
        step = chunks.shape[1]
        for c, i in enumerate(range(0, sk.d, step)):
            n = min(step, sk.d - i)
            idx = sk.chunk_index(i, self._chunk_index[:n])
            xc = chunks[0, :n].copy_(x[i : i + n])
            sk.add(sx, idx, xc)
            if prev is not None:
                pc = chunks[1, :n].copy_(prev[i : i + n])
                torch.sub(pc, xc, out=pc)
                torch.dot(pc, pc, out=p_slots[c])
            if g is not None:
                gc = chunks[2, :n].copy_(g[i : i + n])
                torch.dot(gc, gc, out=g_slots[c])
                sk.add(sg, idx, gc)
        if prev is not None:
            torch.sum(ps, dim=0, out=self._sq[0])
        if g is not None:
            torch.sum(pg, dim=0, out=self._sq[1])

    def _push_sketch(self, x: torch.Tensor, prev: torch.Tensor | None,
                     lr: float | None) -> None:
        """S x_t (S = I: x_t itself) as the next row of trajectory/sketches/ and, with
        ``prev`` = x_{t-1} (hashed), s_{t-1}."""
        assert self._xstage is not None and self._snorms is not None
        if self.identity:
            self._xstage.push(lambda row: row.copy_(x), lr)
            return
        assert self.sketch is not None and self._sq is not None
        sk = self.sketch
        self._pass(x, prev, None)
        if prev is not None:
            self._snorms.push_value(self._sq[0], self._lr_prev)
        self._xstage.push(lambda row: sk.finish(self._sums[0], row), lr)

    def pre_step(self, rec: Recording, step: int, lr: float) -> None:
        assert self._snorms is not None
        x = self._bufs[step % 2]
        rec.flat(out=x)
        self._sample_rows(step, lr, x)
        prev = self._bufs[(step - 1) % 2] if step > 0 else None  # s_{t-1} (t > 0)
        if self._gstage is not None and not self.identity:
            self._push_both(rec, step, lr, x, prev)
        else:
            self._push_sketch(x, prev, lr)
            if self._gstage is not None:
                self._push_grad(rec, step, lr)
        self._lr_prev = lr

    def _push_both(self, rec: Recording, step: int, lr: float, x: torch.Tensor,
                   prev: torch.Tensor | None) -> None:
        """Hashed, with gradients: S x_t, S g_t, s_{t-1} and ||g_t||^2 from one pass, and
        g_t itself on the check sample."""
        assert self.writer is not None and self._gstage is not None
        assert self._xstage is not None and self._snorms is not None
        assert self.sketch is not None and self._g is not None and self._sq is not None
        sk = self.sketch
        g = rec.grad_flat(out=self._g)
        self._pass(x, prev, g)
        if prev is not None:
            self._snorms.push_value(self._sq[0], self._lr_prev)
        self._gnorms.push_value(self._sq[1])
        self._xstage.push(lambda row: sk.finish(self._sums[0], row), lr)
        self._gstage.push(lambda row: sk.finish(self._sums[1], row), lr)
        if self.sampler.keep(step):
            self.writer.write_grad(g)

    def _push_grad(self, rec: Recording, step: int, lr: float) -> None:
        """S = I: g_t straight into its row (no copy of it; ||g_t||^2 from the rows at
        close), and g_t itself on the check sample."""
        assert self.writer is not None and self._gstage is not None
        writer, kept = self.writer, self.sampler.keep(step)

        def fill(row: torch.Tensor) -> torch.Tensor:
            g = rec.grad_flat(out=row)
            if kept:
                writer.write_grad(g)
            return row

        self._gstage.push(fill, lr)

    def _norms_from_rows(self, T: int) -> None:
        """S = I: s_t and ||g_t||^2 from the kept rows, which are x_t and g_t themselves,
        once training is over, instead of in every step's hooks: the same float64
        operations (``SquaredNorms``, on the same device and scratch vector) on the same
        values, so the same bits. (Measured on the small CNN: the hooks' time a step fell
        by about 100 us and closing took about 60 us a step more.)"""
        assert self._snorms is not None and self._diff is not None
        device = self._diff.device
        xs = TrajectoryStore(self._dir / SKETCHES)
        lrs = xs.lrs
        n = block_rows(xs.d)
        for t0 in range(0, T + 1, n):
            for i, row in enumerate(xs.read(t0, min(T + 1, t0 + n))):
                t = t0 + i  # x_t: s_{t-1} from x_{t-1} and x_t
                self._snorms.push_next(torch.from_numpy(row).to(device),
                                       float(lrs[t - 1]) if t > 0 else None)
        if self._gstage is None:
            return
        gs = TrajectoryStore(self._dir / GRAD_SKETCHES)
        for t0 in range(0, T, n):
            for row in gs.read(t0, min(T, t0 + n)):
                self._gnorms.push(torch.from_numpy(row).to(device))

    def close(self, rec: Recording) -> None:
        if self.writer is None or self.writer.closed:
            return
        assert self._xstage is not None and self._snorms is not None
        T = rec.steps
        x_end = self._bufs[T % 2]
        rec.flat(out=x_end)
        x_last = self._bufs[(T - 1) % 2] if T >= 1 else None
        if x_last is not None:
            self.writer.write(T - 1, x_last)
        self.writer.write(T, x_end)
        self._push_sketch(x_end, x_last, None)
        self._xstage.close()
        if self._gstage is not None:
            self._gstage.close()
        if self.identity:
            self._norms_from_rows(T)
        self._snorms.close()
        if self._gstage is not None:
            self._gnorms.close()
            self._g = None
        self.writer.close(T, {**self._meta(), "sketch_dim": self.k, "identity": self.identity,
                              "hash_seed": hash_seed(self.sampler.seed)})
        self._bufs = []
        self._x = self._diff = self._snorms = self._xstage = None
        self.sketch = None
        self._chunks = self._sq = self._chunk_index = None
        self._sums, self._partials = [], []

    # ------------------------------------------------------------ a finished run's files
    @classmethod
    def _verify_files(cls, directory: Path, steps: int, checksums: bool) -> dict[str, Any]:
        """One sketch's files (a rank's, in an FSDP2 run): its check sample as mode
        ``sample`` checks one (sample.json, x.bin, g.bin), the sketches S x_0 .. S x_T in
        ``sketch/`` (and S g_0 .. S g_{T-1} in ``sketch-grad/``) as trajectory stores
        closed with their rows, widths k and, with ``checksums``, their data against
        their sidecars' CRC32s, s.bin (and g2.bin) a float64 a step."""
        meta = check_sample(directory, steps)
        row = meta["d"] * np.dtype(meta["dtype"]).itemsize
        sizes = {ROWS: len(meta["iterates"]) * row, S_FILE: 8 * steps}
        grads = (directory / GRAD_SKETCHES).exists()
        if meta["gradients"]:
            sizes[GRADS] = len(meta["kept"]) * row
        if grads:
            sizes[G_FILE] = 8 * steps
        check_sizes(directory, sizes)
        k = meta.get("sketch_dim")
        for name, rows, what in ((SKETCHES, steps + 1, "iterates"),
                                 (GRAD_SKETCHES, steps, "gradients")):
            if name == GRAD_SKETCHES and not grads:
                continue
            store = verify_store(directory / name, rows, checksums, what, steps)
            if k is not None and store.d != k:
                raise DamagedRun(f"{directory / name / SIDECAR}: rows of {store.d} numbers, "
                                 f"{directory / SAMPLE_SIDECAR} says sketch_dim {k}")
        return meta

    # ------------------------------------------------------------ after training
    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        """D_t, a_t (and g_dot_t) of every step from the sketch rows summed over the
        trajectory's parts (one, or an FSDP2 run's ranks: S x = sum_r S x^r; S = I, the
        rows put together), s_t (and ||g_t||^2) as sums of the parts' partial sums, the
        check sample's exact values as for mode sample (``measure_sketched``)."""
        parts = Parts(Path(ctx.directory) / TRAJECTORY)
        samples = read_samples(parts)
        k = self.reference(samples[0], k, ctx)  # the exact x* is needed for l_t(x*)
        identity = bool(samples[0].meta.get("identity"))
        T = ctx.steps
        grads = None
        if all((d / GRAD_SKETCHES / SIDECAR).is_file() for d in parts.dirs):  # gradients
            grads = (parts.rows(GRAD_SKETCHES, assemble=identity), parts.summed(G_FILE, T))
        return measure_sketched(
            ctx, k, parts.rows(SKETCHES, assemble=identity), parts.summed(S_FILE, T), grads,
            samples, x0=parts.assemble([sample.row(0) for sample in samples]),
            x_star=parts.assemble([sample.row(k) for sample in samples]).astype(np.float64))

    @classmethod
    def disk_bytes(cls, cfg: Any, d: int, steps: int, row_bytes: int) -> int:
        """The check sample as mode sample's, S x_0 .. S x_T (and S g_t), s_t (and
        ||g_t||^2) of every step."""
        gradients = gradients_option(cls, cfg)
        rate = effective_rate(getattr(cfg, "sketch_sample_rate", 0.02),
                              getattr(cfg, "sketch_check_steps", DEFAULT_CHECK_STEPS), steps)
        kept = rate * steps
        k = getattr(cfg, "sketch_dim", None) or default_dim(d)
        return int(row_bytes * kept * (3 if gradients else 2) + 8 * steps
                   + 8 * k * (steps + 1) * (2 if gradients else 1) + 16 * steps)


def measure_sketched(ctx: MeasureContext, k: int, sketches: Any, s: np.ndarray,
                     grads: tuple[Any, np.ndarray] | None, samples: list[SampleStore], *,
                     x0: np.ndarray, x_star: np.ndarray) -> Measured:
    """What mode sketch measures against x* = x_k, from rows read as a
    ``TrajectoryStore`` reads (``sketches``: S x_t; a sharded run's ``CombinedRows``):
    D_t and a_t from the sketches with the exact s_t; with ``grads`` (S g_t, exact
    ||g_t||^2) g_dot_t from the sketches; the check sample's exact a_t, D_t (and g_dot_t)
    as sums of partial sums over ``samples`` (one per rank holding some entries of x;
    one for an unsharded run); then l_t(x*) of every step, F(x*) and the endpoint
    summary at the whole vectors ``x0`` and ``x_star``."""
    T = ctx.steps
    if sketches.rows < T + 1:
        raise RuntimeError(f"the sketch holds {sketches.rows} iterates, "
                           f"the run took {T} steps")
    lrs = sketches.lrs[:T]
    sx_star = sketches.row(k)
    D, a = np.empty(T), np.empty(T)
    for t0, sxs in sketches.blocks(T, block_rows=block_rows(sketches.d)):
        n = len(sxs) - 1
        q = sketch_quantities(sxs, lrs[t0 : t0 + n], sx_star, s=s[t0 : t0 + n])
        D[t0 : t0 + n], a[t0 : t0 + n] = q.D[:-1], q.a
    a_exact, D_exact = np.full(T, np.nan), np.full(T, np.nan)
    columns = {"a_exact": a_exact, "D_exact": D_exact}
    if grads is not None:
        columns["g_dot"], _ = stream_gradient_quantities(sketches, grads[0], T, sx_star)
        columns["g_norm2"] = grads[1]  # exact
        columns["g_dot_exact"] = np.full(T, np.nan)
    x_stars = [sample.row(k).astype(np.float64) for sample in samples]  # each one's part
    for t, lr in zip(samples[0].kept, samples[0].lrs, strict=True):
        if t >= T:
            continue
        a_exact[t] = D_exact[t] = 0.0
        with_grad = grads is not None and samples[0].gradients
        if with_grad:
            columns["g_dot_exact"][t] = 0.0
        for sample, part_star in zip(samples, x_stars, strict=True):
            qe = trajectory_quantities(np.stack([sample.row(t), sample.row(t + 1)]), [lr],
                                       part_star)
            a_exact[t] += qe.a[0]
            D_exact[t] += qe.D[0]
            if with_grad:
                columns["g_dot_exact"][t] += gradient_quantities(
                    sample.row(t)[None], sample.grad(t)[None], part_star).g_dot[0]
    return measured_every_step(ctx, k, D=D, a=a, s=s, lr=lrs, columns=columns, x0=x0,
                               x_star=x_star)
