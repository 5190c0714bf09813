"""On-disk trajectory: ``.npy`` segment files plus a JSON sidecar.

Layout of a trajectory directory::

    trajectory.json      sidecar: d, dtype, valid rows/steps, segments, closed
    x-0000.npy           (capacity, d) iterates x_t, one row per optimizer step
    lr-0000.npy          (capacity,) the learning rate eta_t of step t
    x-0001.npy ...       further segments when a run outgrows the first

A segment is preallocated (a sparse file: disk blocks are taken only as rows are
written) while the run writes it; ``close`` cuts the last segment's files to the rows
and learning rates they hold and rewrites their headers to match (format 3), so a
closed trajectory's files are exactly as large as their data (a run that knows its
length passes ``capacity`` = T + 1 and has a single segment).

The sidecar is the source of truth: rows beyond its counts are never read, so a
crash can lose at most the steps since the last sidecar write, never corrupt it.
Each segment's entry carries a CRC32 of its valid rows' bytes (``x_crc32``) and of
its valid learning rates (``lr_crc32``), computed as the writer thread writes the
blocks and always matching the counts beside them; ``TrajectoryStore.verify``
checks them, so a file changed on disk after the run is detected, not analysed.
(Format 1 sidecars, from before the checksums, are read without them; formats 1
and 2 have full-size last segments.)

Written rows are synced and dropped from the page cache as the writer thread goes,
and readers drop what they read (``trajreg.record.pagecache``), so neither writing
nor streaming a trajectory leaves it in memory; nothing is memory-mapped.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trajreg.errors import DamagedRun
from trajreg.record.pagecache import drop_cache

SIDECAR = "trajectory.json"
FORMAT = "trajreg-trajectory/3"  # 2: per-segment CRC32s; 3: last segment cut on close
FORMATS = ("trajreg-trajectory/1", "trajreg-trajectory/2", FORMAT)  # TrajectoryStore reads
_CHUNK = 16 << 20  # bytes read at a time when verifying checksums
# written bytes synced and dropped from the page cache at a time: about one write
# buffer, so one sync (tens of ms) takes less than training needs to fill the other
_DROP_BYTES = 8 << 20


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype, size: int | None = None) -> bytes:
    """A version 1.0 ``.npy`` header for a C-ordered array, as numpy writes it; padded
    to ``size`` bytes when given, so a rewritten header keeps the data where it is."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
        "shape": tuple(int(n) for n in shape)})
    header = buf.getvalue()
    if size is None or size == len(header):
        return header
    if size < len(header) or size - 10 > 0xFFFF:
        raise ValueError(f"a .npy header of {len(header)} bytes cannot fill {size}")
    # preamble: magic (6) + version (2) + little-endian uint16 length; text ends in \n
    text = header[10:-1] + b" " * (size - len(header)) + b"\n"
    return header[:8] + struct.pack("<H", len(text)) + text


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pread_into(path: Path, offset: int, out: np.ndarray) -> None:
    """Fill ``out`` with the bytes of ``path`` from ``offset``, then drop them from the
    page cache: a trajectory is streamed once, and cached pages of it would only fill
    the memory charged to the run."""
    view = out.data.cast("B")
    start, n_bytes = offset, len(view)
    if not n_bytes:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        while len(view):
            n = os.preadv(fd, [view], offset)
            if n == 0:
                raise DamagedRun(f"{path}: ends before the rows the sidecar counts")
            view, offset = view[n:], offset + n
        drop_cache(fd, start, n_bytes)
    finally:
        os.close(fd)


class _SegmentFiles:
    """A segment's open files (raw descriptors: ``pwrite``, no user-space buffer to
    flush) and the data offsets after their headers; ``cached``: the file offset from
    which written x rows may still be in the page cache (the writer thread's)."""

    def __init__(self, x: int, x_off: int, lr: int, lr_off: int) -> None:
        self.x, self.x_off, self.lr, self.lr_off = x, x_off, lr, lr_off
        self.cached = x_off


class TrajectoryWriter:
    """Appends rows x_t (and eta_t) to segment files; memory stays O(d).

    Rows are staged in one of two RAM buffers; a full buffer is written to the
    preallocated ``.npy`` file by a background thread while training fills the
    other, so the training loop pays for a copy, not for the disk. (Writing each row
    through a memmap cost a page fault per page and dominated small models' steps.)
    The thread syncs every ``_DROP_BYTES`` written and drops them from the page cache.
    The sidecar only ever counts rows already written to the files. ``capacity``:
    rows per segment file, best the number the run will write (T + 1); ``close``
    cuts the last segment to its rows.
    """

    def __init__(self, directory: str | Path, d: int, dtype: npt.DTypeLike = np.float32,
                 capacity: int = 4096, sync_seconds: float = 5.0,
                 buffer_bytes: int = 8 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / SIDECAR).exists():
            raise FileExistsError(f"{self.dir} already holds a trajectory; refusing to overwrite")
        self.d = int(d)
        self.dtype = np.dtype(dtype)
        self.capacity = max(1, int(capacity))
        self.sync_seconds = sync_seconds
        self.segments: list[dict] = []
        self.rows = 0  # rows committed (buffered, in flight or on disk)
        self.steps = 0  # lr entries committed (rows - 1 once x_T is in, else rows)
        self._disk_rows = self._disk_steps = 0  # known to be in the files
        n_buf = max(1, min(256, buffer_bytes // max(1, self.d * self.dtype.itemsize)))
        self._bufs = [np.empty((n_buf, self.d), self.dtype) for _ in range(2)]
        self._lr_bufs = [np.empty(n_buf, np.float64) for _ in range(2)]
        self._cur = 0
        self._buf_n = 0  # rows in the current buffer (all in the current segment)
        self._files: _SegmentFiles | None = None  # the current segment's
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajreg-writer")
        self._pending: tuple[Future, int, int, dict] | None = None
        self._last_sync = time.monotonic()
        self.closed = False
        self._sync()

    def _open_segment(self) -> None:
        self._close_files()
        k = len(self.segments)
        xf, lf = f"x-{k:04d}.npy", f"lr-{k:04d}.npy"
        files: list[int] = []
        for name, shape, dtype in ((xf, (self.capacity, self.d), self.dtype),
                                   (lf, (self.capacity,), np.dtype(np.float64))):
            header = _npy_header(shape, dtype)
            fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            files += [fd, len(header)]
            _pwrite_all(fd, header, 0)
            # sized as the header says, sparse: blocks are taken as rows are written
            os.ftruncate(fd, len(header) + int(np.prod(shape)) * dtype.itemsize)
        self._files = _SegmentFiles(*files)
        self.segments.append({"x": xf, "lr": lf, "rows": 0, "steps": 0,
                              "x_crc32": 0, "lr_crc32": 0})

    def next_row(self) -> np.ndarray:
        """The writable buffer row that will hold the next iterate (x_{rows})."""
        if self.rows % self.capacity == 0:
            self._write_buffer()
            self._open_segment()
        elif self._buf_n == len(self._bufs[self._cur]):
            self._write_buffer()
        return self._bufs[self._cur][self._buf_n]

    def commit_row(self, lr: float | None) -> None:
        """Mark the row from ``next_row`` as written; ``lr`` is eta_t of the step it starts."""
        if lr is not None:
            if self.steps != self.rows:
                raise RuntimeError("a step learning rate follows a row without one")
            self._lr_bufs[self._cur][self._buf_n] = lr
            self.steps += 1
        self._buf_n += 1
        self.rows += 1
        if time.monotonic() - self._last_sync > self.sync_seconds:
            self._sync()

    @staticmethod
    def _write(files: _SegmentFiles, r0: int, row_bytes: int, x: np.ndarray, lr: np.ndarray,
               crcs: tuple[int, int]) -> tuple[int, int]:
        """Write a block at row ``r0`` of the segment; the segment's CRC32s continued
        over it (blocks of a segment are written in order, one at a time). Once
        ``_DROP_BYTES`` are written, they are synced and dropped from the page cache."""
        xbytes, lbytes = x.data.cast("B"), lr.data.cast("B")
        end = files.x_off + r0 * row_bytes + len(xbytes)
        _pwrite_all(files.x, xbytes, end - len(xbytes))
        if len(lr):
            _pwrite_all(files.lr, lbytes, files.lr_off + r0 * 8)
        if end - files.cached >= _DROP_BYTES:
            drop_cache(files.x, files.cached, end - files.cached, sync=True)
            files.cached = end
        return zlib.crc32(xbytes, crcs[0]), zlib.crc32(lbytes, crcs[1])

    def _write_buffer(self) -> None:
        """Hand the current buffer to the writer thread and switch to the other one."""
        n = self._buf_n
        if n == 0:
            return
        self._wait()  # one write in flight at most: the other buffer is then free
        n_lr = n - (self.rows - self.steps)  # the final row x_T has no learning rate
        r0 = (self.rows - n) % self.capacity
        seg = self.segments[-1]  # its CRCs are current: no other write is in flight
        assert self._files is not None  # a buffer with rows has its segment open
        job = self._pool.submit(self._write, self._files, r0, self.d * self.dtype.itemsize,
                                self._bufs[self._cur][:n], self._lr_bufs[self._cur][:n_lr],
                                (seg["x_crc32"], seg["lr_crc32"]))
        self._pending = (job, n, n_lr, seg)
        self._cur = 1 - self._cur
        self._buf_n = 0

    def _wait(self) -> None:
        if self._pending is None:
            return
        job, n, n_lr, seg = self._pending
        self._pending = None
        # re-raises a failed write (disk full ...) in the training loop
        seg["x_crc32"], seg["lr_crc32"] = job.result()
        self._disk_rows += n
        self._disk_steps += n_lr
        seg["rows"] += n
        seg["steps"] += n_lr

    def _close_files(self) -> None:
        self._wait()
        if self._files is not None:
            # no sync: the rest is written back soon after (and a reader drops it then)
            drop_cache(self._files.x)
            drop_cache(self._files.lr)
            os.close(self._files.x)
            os.close(self._files.lr)
            self._files = None

    def _cut_last_segment(self) -> None:
        """Cut the last segment's files to the rows (learning rates) it holds, each header
        rewritten first with the same length, so the data stays where it is."""
        if self._files is None:
            return
        seg, f = self.segments[-1], self._files
        for fd, offset, shape, dtype in ((f.x, f.x_off, (seg["rows"], self.d), self.dtype),
                                         (f.lr, f.lr_off, (seg["steps"],),
                                          np.dtype(np.float64))):
            if shape[0] < self.capacity:
                _pwrite_all(fd, _npy_header(shape, dtype, offset), 0)
                os.ftruncate(fd, offset + int(np.prod(shape)) * dtype.itemsize)

    def _sync(self) -> None:
        self._write_buffer()
        self._wait()
        if self.closed:
            self._cut_last_segment()  # the sidecar that says closed comes after
        _write_json_atomic(self.dir / SIDECAR, {
            "format": FORMAT, "d": self.d, "dtype": self.dtype.str, "capacity": self.capacity,
            "rows": self._disk_rows, "steps": self._disk_steps, "segments": self.segments,
            "closed": self.closed,
        })
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self.closed = True
        self._sync()
        self._close_files()
        self._pool.shutdown()


def overlapping_blocks(read: Callable[[int, int], np.ndarray], rows: int, stop: int,
                       block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(t0, read(t0, t1 + 1))`` for consecutive blocks of at most ``block_rows`` steps
    overlapping by one row, covering rows 0..stop of a store of ``rows`` rows."""
    if not 0 < stop < rows:
        raise IndexError(f"stop {stop} outside 1..{rows - 1}")
    t0 = 0
    while t0 < stop:
        t1 = min(stop, t0 + block_rows)
        yield t0, read(t0, t1 + 1)
        t0 = t1


class TrajectoryStore:
    """Read access to a trajectory directory written by ``TrajectoryWriter``.

    Opening checks the structure: the sidecar parses, every segment file exists with
    the ``.npy`` header (shape, dtype) and the size the sidecar implies, and the
    counts fit (``DamagedRun`` naming the file and what is wrong). ``verify()`` also
    reads the data against the checksums. Rows are read from the files (``pread``),
    never mapped, and dropped from the page cache once read: streaming a trajectory
    leaves none of it resident.
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        path = self.dir / SIDECAR
        if not path.is_file():
            raise FileNotFoundError(f"no trajectory at {self.dir} (missing {SIDECAR})")
        meta = _read_sidecar(path)
        self.meta = meta
        self.d: int = meta["d"]
        self.rows: int = meta["rows"]
        self.steps: int = meta["steps"]
        self.capacity: int = meta["capacity"]
        self.closed: bool = meta["closed"]
        self.dtype = dtype = np.dtype(meta["dtype"])
        self._offsets: list[tuple[int, int]] = []  # data offsets of each segment's x, lr
        last = len(meta["segments"]) - 1
        for k, seg in enumerate(meta["segments"]):
            # a closed format-3 trajectory's last segment is cut to its rows (steps);
            # while open, and in formats 1-2, it is ``capacity`` rows like the others
            cut = k == last
            self._offsets.append((
                _check_npy(self.dir / seg["x"], (self.capacity, self.d), dtype,
                           fewest=seg["rows"] if cut else None),
                _check_npy(self.dir / seg["lr"], (self.capacity,), np.dtype(np.float64),
                           fewest=seg["steps"] if cut else None)))
            if k < last and seg["rows"] != self.capacity:
                raise DamagedRun(f"{path}: segment {k} holds {seg['rows']} rows, but "
                                 f"only the last segment may hold fewer than {self.capacity}")

    @property
    def checksummed(self) -> bool:
        """Whether the sidecar has checksums (format 2 and later)."""
        return self.meta["format"] != FORMATS[0]

    def verify(self) -> None:
        """Read every valid row and learning rate and compare them with the sidecar's
        CRC32s; ``DamagedRun`` naming the segment file and its rows on a mismatch.
        (A format-1 trajectory has no checksums: only its structure is checked.)"""
        if not self.checksummed:
            return
        row_bytes = self.d * self.dtype.itemsize
        for k, seg in enumerate(self.meta["segments"]):
            first = k * self.capacity
            rows = f"rows {first}-{first + seg['rows'] - 1}"
            x_off, lr_off = self._offsets[k]
            for name, offset, n_bytes, want, what in (
                    (seg["x"], x_off, seg["rows"] * row_bytes, seg["x_crc32"], rows),
                    (seg["lr"], lr_off, seg["steps"] * 8, seg["lr_crc32"],
                     f"learning rates of steps {first}-{first + seg['steps'] - 1}")):
                if _crc32(self.dir / name, offset, n_bytes) != want:
                    raise DamagedRun(f"{self.dir / name}: checksum mismatch ({what})")

    @property
    def lrs(self) -> np.ndarray:
        """eta_t for every recorded step, shape (steps,)."""
        out = np.empty(self.steps, np.float64)
        start = 0
        for (_, lr_off), seg in zip(self._offsets, self.meta["segments"], strict=True):
            _pread_into(self.dir / seg["lr"], lr_off, out[start : start + seg["steps"]])
            start += seg["steps"]
        return out

    def row(self, t: int) -> np.ndarray:
        """x_t, read from its file (a new array: no mapping keeps the file's pages
        resident, so reading every row one by one does not grow memory either)."""
        if not 0 <= t < self.rows:
            raise IndexError(f"row {t} outside the {self.rows} recorded iterates")
        return self._slice(t, t + 1)[0]

    def blocks(self, stop: int, block_rows: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t0, xs)`` with xs = rows t0..t0+n (inclusive), consecutive blocks
        overlapping by one row, covering rows 0..stop. Each block is at most
        ``block_rows + 1`` rows, so memory stays bounded."""
        return overlapping_blocks(self._slice, self.rows, stop, block_rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 as one array (read from the files, not mapped)."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows {start}..{stop - 1} outside the {self.rows} recorded rows")
        if start == stop:
            return np.empty((0, self.d), dtype=self.dtype)
        return self._slice(start, stop)

    def _slice(self, start: int, stop: int) -> np.ndarray:
        # read, not a memmap view: mapped pages stay resident and would make memory
        # grow with the rows read (all of them, for a caller reading row by row)
        out = np.empty((stop - start, self.d), self.dtype)
        row_bytes = self.d * self.dtype.itemsize
        i = 0
        while start < stop:
            k, r = divmod(start, self.capacity)
            n = min(stop - start, self.capacity - r)
            _pread_into(self.dir / self.meta["segments"][k]["x"],
                        self._offsets[k][0] + r * row_bytes, out[i : i + n])
            start += n
            i += n
        return out


def verify_store(directory: Path, rows: int, checksums: bool = True,
                 what: str = "iterates", steps: int | None = None) -> TrajectoryStore:
    """The trajectory store in ``directory`` as a finished run left it: its structure
    (opening it), closed, holding at least ``rows`` rows (``what``, for the message;
    ``steps``: the run's steps, for the message, default ``rows - 1``) and, with
    ``checksums``, its data matching the sidecar's CRC32s. ``DamagedRun`` naming the
    file otherwise (a missing sidecar included)."""
    sidecar = Path(directory) / SIDECAR
    try:
        store = TrajectoryStore(directory)
    except FileNotFoundError:
        raise DamagedRun(f"{sidecar}: missing") from None
    if not store.closed:
        raise DamagedRun(f"{sidecar}: not closed (recording did not finish)")
    if store.rows < rows:
        raise DamagedRun(f"{sidecar}: holds {store.rows} {what}, the run took "
                         f"{rows - 1 if steps is None else steps} steps")
    if checksums:
        store.verify()
    return store


def read_step_norms(path: Path, count: int) -> np.ndarray:
    """The first ``count`` values of a per-step float64 file (s.bin, g2.bin, su.bin:
    ``geometry.SquaredNorms`` writes them)."""
    values = np.fromfile(path, dtype=np.float64, count=count)
    if len(values) < count:
        raise RuntimeError(f"{path}: holds {len(values)} step norms, {count} needed")
    return values


def read_sidecar_json(path: Path) -> Any:
    """The JSON in the sidecar ``path``; ``DamagedRun`` ("PATH: missing", "PATH: not
    valid JSON (...)") when it is absent or does not parse."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise DamagedRun(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"{path}: not valid JSON ({exc})") from None


def _read_sidecar(path: Path) -> dict:
    """The sidecar, checked for the keys and types the reader relies on."""
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DamagedRun(f"{path}: not a JSON object")
    if meta.get("format") not in FORMATS:
        raise DamagedRun(f"{path}: unknown trajectory format {meta.get('format')!r}")
    seg_keys = ("x", "lr", "rows", "steps") + (("x_crc32", "lr_crc32")
                                               if meta["format"] != FORMATS[0] else ())

    def ok_int(v: object, low: int = 0) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    bad = next((k for k, low in (("d", 1), ("capacity", 1), ("rows", 0), ("steps", 0))
                if not ok_int(meta.get(k), low)), None)
    if bad is None and not (isinstance(meta.get("closed"), bool)
                            and isinstance(meta.get("segments"), list)):
        bad = "closed" if not isinstance(meta.get("closed"), bool) else "segments"
    if bad is None:
        try:
            np.dtype(meta.get("dtype"))
        except TypeError:
            bad = "dtype"
    if bad is not None:
        raise DamagedRun(f"{path}: key {bad!r} missing or invalid")
    names: set[str] = set()
    for k, seg in enumerate(meta["segments"]):
        if not (isinstance(seg, dict) and all(key in seg for key in seg_keys)
                and all(isinstance(seg[key], str) and "/" not in seg[key]
                        and seg[key] not in ("", ".", "..") for key in ("x", "lr"))
                and all(ok_int(seg[key]) for key in seg_keys[2:])):
            raise DamagedRun(f"{path}: segment {k} is not a valid entry")
        if seg["rows"] > meta["capacity"]:
            raise DamagedRun(f"{path}: segment {k} counts {seg['rows']} rows, more than "
                             f"its capacity {meta['capacity']}")
        if not seg["rows"] - 1 <= seg["steps"] <= seg["rows"]:
            raise DamagedRun(f"{path}: segment {k} counts {seg['steps']} learning rates "
                             f"for {seg['rows']} rows")
        names.update((seg["x"], seg["lr"]))
    if len(names) != 2 * len(meta["segments"]):
        raise DamagedRun(f"{path}: segments share files")
    for key in ("rows", "steps"):
        total = sum(seg[key] for seg in meta["segments"])
        if total != meta[key]:
            raise DamagedRun(f"{path}: {key} is {meta[key]} but the segments hold {total}")
    return meta


def _check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype,
               fewest: int | None = None) -> int:
    """The ``.npy`` file at ``path`` has this header and exactly the size it implies;
    with ``fewest``, the header's first dimension may be anything from ``fewest`` to
    ``shape[0]`` (a last segment cut on close). Returns the data offset."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            got_shape, fortran, got_dtype = read(f)
            offset = f.tell()
    except FileNotFoundError:
        raise DamagedRun(f"{path}: missing") from None
    except (ValueError, OSError, SyntaxError) as exc:
        raise DamagedRun(f"{path}: not a .npy file ({exc})") from None
    got_shape = tuple(got_shape)
    if fewest is not None and len(got_shape) == len(shape) and got_shape[1:] == shape[1:] \
            and fewest <= got_shape[0] <= shape[0]:
        shape = got_shape
    if got_shape != shape or got_dtype != dtype or fortran:
        want_shape = shape if fewest is None else (f"{fewest}..{shape[0]}", *shape[1:])
        raise DamagedRun(f"{path}: header says {got_dtype} {got_shape}, the sidecar "
                         f"{dtype} {want_shape}".replace("'", ""))
    size, want = os.path.getsize(path), offset + int(np.prod(shape)) * dtype.itemsize
    if size != want:
        raise DamagedRun(f"{path}: {size} bytes, {want} expected (truncated?)"
                         if size < want else f"{path}: {size} bytes, {want} expected")
    return offset


def _crc32(path: Path, offset: int, n_bytes: int) -> int:
    """CRC32 of the ``n_bytes`` bytes of ``path`` from ``offset`` (after the ``.npy``
    header), each chunk dropped from the page cache once read."""
    with open(path, "rb") as f:
        f.seek(offset)
        crc = 0
        while n_bytes > 0:
            chunk = f.read(min(n_bytes, _CHUNK))
            if not chunk:
                raise DamagedRun(f"{path}: ends before the rows the sidecar counts")
            crc = zlib.crc32(chunk, crc)
            drop_cache(f.fileno(), offset, len(chunk))
            offset += len(chunk)
            n_bytes -= len(chunk)
    return crc
