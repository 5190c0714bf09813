"""Fuzzing finished run directories: random bit flips and truncations of every file.

Three tiny runs are recorded once, in modes store, sample and sketch; each example
copies one, flips one bit of one of its files or cuts the file short, and runs
``trajreg analyze`` on the copy in process. A file that changed must give exit 2,
exactly one line ``trajreg: error: run directory damaged: FILE: ...`` and the run
directory left byte for byte as the damage left it; only an unchanged run (a cut at
the file's own length) may exit 0, and then with the old numbers. Every file of every
mode is also damaged once deterministically (``test_every_file``), so no file depends
on the fuzzer drawing it.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import tiny
from trajreg import cli

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MODES = {
    "store": {"mode": "store"},
    "sample": {"mode": "sample", "sample_min_steps": 0, "sample_rate": 0.5},
    "sketch": {"mode": "sketch", "sketch_check_steps": 0, "sketch_sample_rate": 0.3,
               "sketch_dim": 16},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One finished tiny run per mode (16 steps of an MLP of width 8), with figures."""
    import warnings

    import torch

    from trajreg.run.runner import run
    from trajreg.train.config import load_config

    base = tmp_path_factory.mktemp("fuzz-rundir")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tiny samples' "insufficient samples"
            for name, record in MODES.items():
                cfg = load_config(tiny(data={"subset": 256, "batch_size": 32},
                                       model={"depth": 2, "width": 8, "norm": "none"},
                                       train={"epochs": 2}, record=record))
                out[name], _ = run(cfg, base / name, figures=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _numbers(summary: dict) -> dict:
    return {k: summary[k] for k in ("gamma_hat", "kappa_hat", "gamma_bar", "n_steps",
                                    "reference_step", "window", "record_mode")}


def _damage_and_analyze(src: Path, tmp: Path, rel: str, how: str, at: int) -> None:
    """Copy ``src``, flip bit ``at`` of ``rel`` (``how`` "flip"), cut it to ``at``
    bytes ("cut") or leave it ("none"), run ``trajreg analyze`` and check the outcome
    (module docstring)."""
    run = tmp / "r"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, run)
    path = run / rel
    data = bytearray(path.read_bytes())
    if how == "flip":
        at %= 8 * len(data)
        data[at // 8] ^= 1 << (at % 8)
    elif how == "cut":
        at %= len(data) + 1
        data = data[:at]
    path.write_bytes(bytes(data))
    changed = _snapshot(run) != _snapshot(src)
    before = _snapshot(run)
    old = json.loads((src / "summary.json").read_text())
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["analyze", str(run), "-q"])
    message = err.getvalue()
    case = (rel, how, at)
    if not changed:
        assert status == 0, (case, message)
        assert _numbers(json.loads((run / "summary.json").read_text())) == _numbers(old)
        return
    assert status == 2, (case, message)
    lines = message.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"trajreg: error: run directory damaged: {run}"), (case, message)
    assert _snapshot(run) == before, case  # the old analysis untouched
    assert [p.name for p in tmp.iterdir()] == ["r"], case


FUZZ = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_flipped_or_cut_files_are_refused(runs, tmp_path_factory, data):
    mode = data.draw(st.sampled_from(sorted(MODES)), label="mode")
    src = runs[mode]
    rel = data.draw(st.sampled_from(_files(src)), label="file")
    how = data.draw(st.sampled_from(["flip"] * 4 + ["cut"] * 4 + ["none"]), label="how")
    at = data.draw(st.integers(0, 1 << 30), label="at")
    _damage_and_analyze(src, tmp_path_factory.mktemp("ex"), rel, how, at)


def _every_file() -> list[tuple[str, str, str]]:
    # the files each mode writes (checked against the runs in the test)
    common = ["checksums.json", "config.yaml", "final_state.pt", "metrics.parquet",
              "summary.json"]
    files = {
        "store": ["trajectory/lr-0000.npy", "trajectory/trajectory.json",
                  "trajectory/x-0000.npy"],
        "sample": ["trainlog.parquet", "trajectory/g.bin", "trajectory/sample.json",
                   "trajectory/su.bin", "trajectory/x.bin"],
        "sketch": ["trajectory/g.bin", "trajectory/g2.bin", "trajectory/s.bin",
                   "trajectory/sample.json", "trajectory/x.bin"]
        + [f"trajectory/{d}/{f}" for d in ("sketch", "sketch-grad")
           for f in ("lr-0000.npy", "trajectory.json", "x-0000.npy")],
    }
    return [(mode, rel, how) for mode in MODES for rel in sorted(common + files[mode])
            for how in ("flip", "cut")]


@pytest.mark.parametrize("mode, rel, how", _every_file())
def test_every_file(runs, tmp_path, mode, rel, how):
    listed = {r for m, r, _ in _every_file() if m == mode}
    assert set(_files(runs[mode])) == listed  # a new file: add it above
    size = (runs[mode] / rel).stat().st_size
    # a bit in the middle of the file; a cut of its last byte
    _damage_and_analyze(runs[mode], tmp_path, rel, how,
                        4 * size + 3 if how == "flip" else size - 1)
