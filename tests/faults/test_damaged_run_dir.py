"""A damaged run directory is refused before analysis with one line naming the file
and the fault, exit 2, and is left as it was. One real store run (321 iterates) is
damaged in each way a disk, a crash or a person can damage it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny
from trajreg import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """digits subset 256 in batches of 8: 32 steps an epoch, 10 epochs, 321 iterates."""
    import torch

    from trajreg.run.runner import run
    from trajreg.train.config import load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(tiny(data={"subset": 256, "batch_size": 8},
                               model={"depth": 2, "width": 8, "norm": "none"},
                               train={"epochs": 10}))
        out, _ = run(cfg, tmp_path_factory.mktemp("damaged") / "r", figures=False,
                     progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


def _overwrite_rows(run: Path, first: int, last: int) -> None:
    x = np.load(run / "trajectory" / "x-0000.npy", mmap_mode="r+")
    x[first:last + 1] = np.random.default_rng(0).standard_normal(
        (last + 1 - first, x.shape[1])).astype(x.dtype)
    x.flush()


def _sidecar(run: Path, change) -> None:
    path = run / "trajectory" / "trajectory.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _beyond(meta: dict) -> None:
    meta["segments"][0]["rows"] += 50
    meta["segments"][0]["steps"] += 50
    meta["rows"] += 50
    meta["steps"] += 50


def _garble(path: Path, at: int = 0, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + n] = b"\x00\xff\xfe" * (n // 3)
    path.write_bytes(bytes(data))


def _garble_tensor_data(path: Path) -> None:
    """Change bytes inside the largest tensor's stored data (not the zip's padding)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                   info.header_offset + 30])
    _garble(path, info.header_offset + 30 + name_len + extra_len + 16, 9)


CASES = {
    "x truncated": (lambda r: _truncate(r / "trajectory/x-0000.npy", 4000),
                    "trajectory/x-0000.npy", r"\d+ bytes, \d+ expected \(truncated\?\)"),
    "rows 200-260 overwritten": (lambda r: _overwrite_rows(r, 200, 260),
                                 "trajectory/x-0000.npy", r"checksum mismatch \(rows 0-320\)"),
    "one float flipped": (lambda r: _overwrite_rows(r, 7, 7),
                          "trajectory/x-0000.npy", r"checksum mismatch \(rows 0-320\)"),
    "lr truncated": (lambda r: _truncate(r / "trajectory/lr-0000.npy", 8),
                     "trajectory/lr-0000.npy", r"truncated"),
    "sidecar garbled": (lambda r: _garble(r / "trajectory/trajectory.json"),
                        "trajectory/trajectory.json", "not valid JSON"),
    "sidecar missing": (lambda r: (r / "trajectory/trajectory.json").unlink(),
                        "trajectory/trajectory.json", "missing"),
    "rows beyond the file": (lambda r: _sidecar(r, _beyond), "trajectory/trajectory.json",
                             "segment 0 counts 371 rows, more than its capacity 321"),
    "fewer rows than steps": (lambda r: _sidecar(r, lambda m: (
        m["segments"][0].update(rows=300, steps=299), m.update(rows=300, steps=299))),
        "trajectory/trajectory.json", "holds 300 iterates, the run took 320 steps"),
    "sidecar not closed": (lambda r: _sidecar(r, lambda m: m.update(closed=False)),
                           "trajectory/trajectory.json", "not closed"),
    "final state missing": (lambda r: (r / "final_state.pt").unlink(), "final_state.pt",
                            "missing"),
    "final state truncated": (lambda r: _truncate(r / "final_state.pt", 300),
                              "final_state.pt", "not a torch state file"),
    "final state garbled": (lambda r: _garble_tensor_data(r / "final_state.pt"),
                            "final_state.pt", r"checksum mismatch in archive/data/\d+"),
    "summary garbled": (lambda r: _garble(r / "summary.json"), "summary.json",
                        "not valid JSON"),
    "summary key missing": (lambda r: (r / "summary.json").write_text(json.dumps(
        {k: v for k, v in json.loads((r / "summary.json").read_text()).items()
         if k != "n_steps"})), "summary.json", "missing key 'n_steps'"),
    "config binary": (lambda r: (r / "config.yaml").write_bytes(bytes(range(256)) * 4),
                      "config.yaml", "not valid YAML"),
    "config invalid": (lambda r: (r / "config.yaml").write_text(
        (r / "config.yaml").read_text().replace("lr: 0.05", "lr: -1.0")),
        "config.yaml", "optim.lr: must be > 0"),
    "metrics truncated": (lambda r: _truncate(r / "metrics.parquet", 500), "metrics.parquet",
                          "unreadable"),
    "metrics garbled": (lambda r: (r / "metrics.parquet").write_bytes(b"PAR1" + b"\0" * 99),
                        "metrics.parquet", "unreadable"),
}


# a truncated or overwritten trajectory must not pass with --reference final either
# (the metrics already hold that reference's quantities: nothing needs the trajectory)
PARAMS = [(case, None) for case in CASES] + [("x truncated", "final"),
                                             ("rows 200-260 overwritten", "final")]


@pytest.mark.parametrize("case, reference", PARAMS)
def test_damage_is_one_line_exit_2_and_nothing_changes(run_dir, tmp_path, capsys, case,
                                                       reference):
    damage, name, why = CASES[case]
    run = tmp_path / "r"
    shutil.copytree(run_dir, run)
    damage(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["analyze", str(run), "-q"] + (["--reference", reference] if reference else [])
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"trajreg: error: run directory damaged: {re.escape(str(run / name))}"
                        rf": .*{why}.*\n", err), err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_undamaged_copy_analyses(run_dir, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(run_dir, run)
    assert cli.main(["analyze", str(run), "--reference", "best"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"trajreg: verifying {run} ..." and err[-1] == f"trajreg: writing {run} ..."
