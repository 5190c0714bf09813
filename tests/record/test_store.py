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
    assert meta["format"] == "trajreg-trajectory/2"
    assert [s["rows"] for s in meta["segments"]] == [10, 10, 3]
    assert all(isinstance(s["x_crc32"], int) and s["x_crc32"] for s in meta["segments"])
    store = TrajectoryStore(tmp_path)
    store.verify()
    np.testing.assert_array_equal(np.stack([store.row(t) for t in range(store.rows)]), xs)
    np.testing.assert_allclose(store.lrs, 0.1 * np.arange(1, 23))


def test_overwritten_rows_are_detected_with_their_range(tmp_path):
    write(tmp_path)
    path = tmp_path / "x-0001.npy"
    store = TrajectoryStore(tmp_path)
    offset = store._x[1].offset
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
    # the preallocated rows after the last valid one are not data
    write(tmp_path)
    store = TrajectoryStore(tmp_path)
    offset = store._x[2].offset
    with open(tmp_path / "x-0002.npy", "r+b") as f:
        f.seek(offset + 5 * 7 * 4)
        f.write(b"\xff" * 28)
    TrajectoryStore(tmp_path).verify()


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
