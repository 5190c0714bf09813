"""The trajectory files of modes sample and sketch were never verified: a flipped or
truncated x.bin, g.bin, s.bin, sample.json or sketch/x-0000.npy was accepted (the
sketch's CRC32s in its trajectory.json were not checked), and re-measuring from them
gave sketch gamma_hat(0.05) -0.193 -> -4.72, gamma_bar 0.871 -> 3.09, sample gamma_bar
0.936 -> 2.23; truncated ones crashed with ValueError or RuntimeError. Now every file
is in checksums.json and each mode's ``verify`` checks its files' structure and sizes
(and the sketch's stores their CRC32s): one line naming the file, exit 2, the run
unchanged, re-measuring (``--reference best`` is refused for these modes, so
``--eps`` and the default reference) never reached."""

from __future__ import annotations

import pytest

from tests.regressions._damaged_runs import analyze, copy_run, damaged_line, files, make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("onepass")
    return {mode: make_run(base / mode, mode) for mode in ("sample", "sketch")}


def _flip(path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 + 3 if at is None else at
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _cut(path, n: int = 1) -> None:
    path.write_bytes(path.read_bytes()[:-n])


FILES = {"sample": ["trajectory/x.bin", "trajectory/g.bin", "trajectory/su.bin",
                    "trajectory/sample.json"],
         "sketch": ["trajectory/x.bin", "trajectory/g.bin", "trajectory/s.bin",
                    "trajectory/g2.bin", "trajectory/sample.json",
                    "trajectory/sketch/x-0000.npy", "trajectory/sketch-grad/x-0000.npy",
                    "trajectory/sketch/trajectory.json"]}
CASES = [(mode, name) for mode, names in FILES.items() for name in names]


def _refused(run, name: str, why: tuple[str, ...], prefix: str | None = None) -> None:
    """Exit 2, one line naming ``name`` (or starting with ``prefix``) and one of ``why``,
    the run as it was."""
    before = files(run)
    status, err, after = analyze(run, "--eps", "0,0.05,0.1")
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    start = damaged_line(run, name) if prefix is None else prefix
    assert err.startswith(start) and any(w in err for w in why), err
    assert after == before


@pytest.mark.parametrize("mode, name", CASES)
def test_a_flipped_file_is_refused(runs, tmp_path, mode, name):
    run = copy_run(runs[mode], tmp_path / "r")
    _flip(run / name)
    if name.endswith(".json"):  # a sidecar: garbled, or naming a file that is not there
        _refused(run, name, ("not valid JSON", "missing", "not valid", "checksum mismatch"),
                 prefix=f"trajreg: error: run directory damaged: {run / 'trajectory'}/")
    else:
        _refused(run, name, ("checksum mismatch",))


@pytest.mark.parametrize("manifest", [True, False])
@pytest.mark.parametrize("mode, name", CASES)
def test_a_truncated_file_is_refused(runs, tmp_path, mode, name, manifest):
    """Also in a run without checksums.json: the sizes are the mode's own."""
    run = copy_run(runs[mode], tmp_path / "r", manifest=manifest)
    _cut(run / name, 5)
    _refused(run, name, ("(truncated?)",) if name.endswith((".bin", ".npy"))
             else ("not valid JSON",))


def test_a_flipped_sketch_is_refused_without_checksums_json(runs, tmp_path):
    """The sketch's stores carry their own CRC32s: checked in an older run too."""
    run = copy_run(runs["sketch"], tmp_path / "r", manifest=False)
    _flip(run / "trajectory/sketch/x-0000.npy", -9)
    _refused(run, "trajectory/sketch/x-0000.npy", ("checksum mismatch (rows 0-16)",))
