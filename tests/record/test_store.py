"""The trajectory store's integrity: CRC32s written as blocks are written, structure
checked on open, data checked by ``verify``; a damaged file is a ``DamagedRun`` naming
the file and what is wrong. Real files, written by the real writer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trajreg.errors import DamagedRun
from trajreg.record.store import SIDECAR, TrajectoryStore, TrajectoryWriter


def write(directory, rows=23, d=7, capacity=10, buffer_bytes=3 * 7 * 4, seed=0):
    """A closed trajectory of ``rows`` iterates (the last without a learning rate),
    in segments of ``capacity`` rows, through buffers of 3 rows; the rows written."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((rows, d)).astype(np.float32)
    writer = TrajectoryWriter(directory, d, np.float32, capacity=capacity,
                              buffer_bytes=buffer_bytes)
    for t, x in enumerate(xs):
        writer.next_row()[:] = x
        writer.commit_row(0.1 * (t + 1) if t < rows - 1 else None)
    writer.close()
    return xs


def sidecar(directory):
    return json.loads((directory / SIDECAR).read_text())


def test_checksums_match_the_data_in_every_segment(tmp_path):
    xs = write(tmp_path)
    meta = sidecar(tmp_path)
    assert meta["format"] == "trajreg-trajectory/3"
    assert [s["rows"] for s in meta["segments"]] == [10, 10, 3]
    assert all(isinstance(s["x_crc32"], int) and s["x_crc32"] for s in meta["segments"])
    store = TrajectoryStore(tmp_path)
    store.verify()
    np.testing.assert_array_equal(np.stack([store.row(t) for t in range(store.rows)]), xs)
    np.testing.assert_allclose(store.lrs, 0.1 * np.arange(1, 23))


def test_overwritten_rows_are_detected_with_their_range(tmp_path):
    write(tmp_path)
    path = tmp_path / "x-0001.npy"
    offset = np.load(path, mmap_mode="r").offset
    with open(path, "r+b") as f:  # row 14 = row 4 of segment 1, silently changed
        f.seek(offset + 4 * 7 * 4)
        f.write(np.float32([1e6]).tobytes())
    store = TrajectoryStore(tmp_path)  # the structure is intact
    with pytest.raises(DamagedRun, match=r"x-0001\.npy: checksum mismatch \(rows 10-19\)"):
        store.verify()


def test_changed_learning_rate_is_detected(tmp_path):
    write(tmp_path)
    lr = np.load(tmp_path / "lr-0002.npy", mmap_mode="r+")
    lr[0] = 5.0
    lr.flush()
    del lr
    with pytest.raises(DamagedRun, match=r"lr-0002\.npy: checksum mismatch \(learning rates "
                                         r"of steps 20-21\)"):
        TrajectoryStore(tmp_path).verify()


def test_rows_beyond_the_written_ones_are_not_checked(tmp_path):
    # the preallocated rows after the last valid one of a run that never closed its
    # trajectory (a crash) are not data
    writer = TrajectoryWriter(tmp_path, 7, np.float32, capacity=10, sync_seconds=0.0)
    for t in range(23):
        writer.next_row()[:] = t
        writer.commit_row(0.1)
    path = tmp_path / "x-0002.npy"
    assert np.load(path, mmap_mode="r").shape == (10, 7)  # full size while open
    offset = np.load(path, mmap_mode="r").offset
    with open(path, "r+b") as f:
        f.seek(offset + 5 * 7 * 4)
        f.write(b"\xff" * 28)
    store = TrajectoryStore(tmp_path)
    assert (store.rows, store.closed) == (23, False)
    store.verify()
    writer._pool.shutdown()


def test_truncated_segment_is_refused_on_open(tmp_path):
    write(tmp_path)
    path = tmp_path / "x-0000.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DamagedRun, match=r"x-0000\.npy: \d+ bytes, \d+ expected \(truncated\?\)"):
        TrajectoryStore(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["segments"][2].update(rows=11), "segment 2 counts 11 rows, more than its "
                                                 "capacity 10"),
    (lambda m: m.update(rows=99), "rows is 99 but the segments hold 23"),
    (lambda m: (m["segments"][0].update(rows=9, steps=9), m.update(rows=22, steps=21)),
     "segment 0 holds 9 rows"),
    (lambda m: m["segments"][1].pop("x_crc32"), "segment 1 is not a valid entry"),
    (lambda m: m["segments"][1].update(x="../../etc/passwd"), "segment 1 is not a valid entry"),
    (lambda m: m.update(d="7"), "key 'd' missing or invalid"),
    (lambda m: m.update(dtype="<f3"), "key 'dtype' missing or invalid"),
    (lambda m: m.update(format="other/9"), "unknown trajectory format 'other/9'"),
])
def test_inconsistent_sidecar_is_refused(tmp_path, change, message):
    write(tmp_path)
    meta = sidecar(tmp_path)
    change(meta)
    (tmp_path / SIDECAR).write_text(json.dumps(meta))
    with pytest.raises(DamagedRun) as info:
        TrajectoryStore(tmp_path)
    assert message in str(info.value) and str(tmp_path / SIDECAR) in str(info.value)


def test_garbled_sidecar_and_header(tmp_path):
    write(tmp_path)
    (tmp_path / SIDECAR).write_bytes(b'{"format": "trajreg-traj\x00\xff')
    with pytest.raises(DamagedRun, match="not valid JSON"):
        TrajectoryStore(tmp_path)
    write(tmp_path / "b")
    (tmp_path / "b" / "lr-0001.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DamagedRun, match=r"lr-0001\.npy: not a \.npy file"):
        TrajectoryStore(tmp_path / "b")
    write(tmp_path / "c")
    np.save(tmp_path / "c" / "x-0001.npy", np.zeros((10, 8), np.float32))
    with pytest.raises(DamagedRun, match=r"header says float32 \(10, 8\), the sidecar "
                                         r"float32 \(10, 7\)"):
        TrajectoryStore(tmp_path / "c")


def test_format_1_sidecar_is_read_without_checksums(tmp_path):
    xs = write(tmp_path)
    meta = sidecar(tmp_path)
    meta["format"] = "trajreg-trajectory/1"
    for seg in meta["segments"]:
        del seg["x_crc32"], seg["lr_crc32"]
    (tmp_path / SIDECAR).write_text(json.dumps(meta))
    store = TrajectoryStore(tmp_path)
    assert not store.checksummed
    store.verify()
    np.testing.assert_array_equal(store.row(22), xs[22])


def test_sidecar_checksums_always_match_its_counts(tmp_path):
    # mid-run sidecars (sync_seconds=0: one per row) verify too: a crash leaves a
    # consistent prefix
    writer = TrajectoryWriter(tmp_path, 5, np.float32, capacity=4, sync_seconds=0.0,
                              buffer_bytes=2 * 5 * 4)
    for t in range(9):
        writer.next_row()[:] = t
        writer.commit_row(1.0)
        TrajectoryStore(tmp_path).verify()
    writer.close()
    TrajectoryStore(tmp_path).verify()


def test_closed_store_files_hold_exactly_their_rows(tmp_path):
    # the last segment is cut to its rows (learning rates) on close, the header says so,
    # and the data is where it was: numpy, the store and verify read it bit for bit
    xs = write(tmp_path)
    meta = sidecar(tmp_path)
    for k, (rows, steps) in enumerate([(10, 10), (10, 10), (3, 2)]):
        x, lr = tmp_path / f"x-{k:04d}.npy", tmp_path / f"lr-{k:04d}.npy"
        x_off, lr_off = (np.load(f, mmap_mode="r").offset for f in (x, lr))
        assert x.stat().st_size == x_off + rows * 7 * 4
        assert lr.stat().st_size == lr_off + steps * 8
        np.testing.assert_array_equal(np.load(x), xs[10 * k : 10 * k + rows])
        assert meta["segments"][k]["rows"] == rows
    assert meta["closed"]
    store = TrajectoryStore(tmp_path)
    store.verify()
    assert (store.rows, store.steps, store.capacity) == (23, 22, 10)
    np.testing.assert_array_equal(store.read(0, 23), xs)
    np.testing.assert_array_equal(np.stack([store.row(t) for t in range(23)]), xs)
    np.testing.assert_array_equal(np.concatenate(
        [b if t0 == 0 else b[1:] for t0, b in store.blocks(22, block_rows=4)]), xs)
    np.testing.assert_array_equal(store.lrs, 0.1 * np.arange(1, 23))


def test_run_length_capacity_gives_one_exact_file(tmp_path):
    # a run that passes capacity = T + 1 (trajreg run does) writes one segment, cut to
    # the T + 1 rows; a smaller hint than needed still works (more segments)
    xs = write(tmp_path, rows=23, capacity=4096)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["lr-0000.npy", SIDECAR, "x-0000.npy"]
    x = tmp_path / "x-0000.npy"
    assert x.stat().st_size == np.load(x, mmap_mode="r").offset + 23 * 7 * 4
    TrajectoryStore(tmp_path).verify()
    np.testing.assert_array_equal(TrajectoryStore(tmp_path).read(0, 23), xs)


def test_full_size_last_segment_of_format_2_is_read(tmp_path):
    # trajectories written before the cut (format 2) keep a capacity-sized last segment
    xs = write(tmp_path)
    for name, shape, dtype in (("x-0002.npy", (10, 7), np.float32),
                               ("lr-0002.npy", (10,), np.float64)):
        old = np.load(tmp_path / name)
        full = np.zeros(shape, dtype)
        full[: len(old)] = old
        np.lib.format.open_memmap(tmp_path / name, "w+", dtype, shape)[:] = full
    meta = sidecar(tmp_path)
    meta["format"] = "trajreg-trajectory/2"
    (tmp_path / SIDECAR).write_text(json.dumps(meta))
    store = TrajectoryStore(tmp_path)
    store.verify()
    np.testing.assert_array_equal(store.read(0, 23), xs)
    np.testing.assert_allclose(store.lrs, 0.1 * np.arange(1, 23))


def test_cut_segment_shorter_than_its_count_is_refused(tmp_path):
    write(tmp_path)
    meta = sidecar(tmp_path)
    meta["segments"][2].update(rows=4, steps=3)
    meta.update(rows=24, steps=23)
    (tmp_path / SIDECAR).write_text(json.dumps(meta))
    with pytest.raises(DamagedRun, match=r"x-0002\.npy: header says float32 \(3, 7\), the "
                                         r"sidecar float32 \(4\.\.10, 7\)"):
        TrajectoryStore(tmp_path)


def test_reopened_trajectory_cannot_be_overwritten_and_reads_again(tmp_path):
    xs = write(tmp_path)
    with pytest.raises(FileExistsError):
        TrajectoryWriter(tmp_path, 7)
    for _ in range(2):  # a second store on the same files reads the same rows
        np.testing.assert_array_equal(TrajectoryStore(tmp_path).read(0, 23), xs)


def test_written_and_read_rows_are_dropped_from_the_page_cache(tmp_path, monkeypatch):
    # the writer thread syncs and drops every _DROP_BYTES written, the rest on close;
    # every read drops what it read
    import trajreg.record.store as store_module

    calls: list[tuple[int, int, bool]] = []
    real = store_module.drop_cache

    def spy(fd, offset=0, length=0, *, sync=False):
        calls.append((offset, length, sync))
        real(fd, offset, length, sync=sync)

    monkeypatch.setattr(store_module, "drop_cache", spy)
    monkeypatch.setattr(store_module, "_DROP_BYTES", 3 * 7 * 4)
    xs = write(tmp_path, capacity=100)
    offset = np.load(tmp_path / "x-0000.npy", mmap_mode="r").offset
    synced = [(o, n) for o, n, sync in calls if sync]
    # contiguous ranges from the first row on, each at least _DROP_BYTES
    assert synced[0][0] == offset and all(n >= 3 * 7 * 4 for _, n in synced)
    assert all(a + n == b for (a, n), (b, _) in zip(synced, synced[1:], strict=False))
    assert synced[-1][0] + synced[-1][1] >= offset + 21 * 7 * 4
    assert (0, 0, False) in calls  # the rest, on close
    calls.clear()
    np.testing.assert_array_equal(TrajectoryStore(tmp_path).read(5, 12), xs[5:12])
    assert calls == [(offset + 5 * 7 * 4, 7 * 7 * 4, False)]
