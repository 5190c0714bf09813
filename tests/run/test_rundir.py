"""The run directory's temporary names, final rename, all-or-nothing re-analysis and
verification, on real directories (and one real tiny run)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.conftest import tiny
from trajreg import atomic
from trajreg.errors import DamagedRun, UserError
from trajreg.run import rundir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _named(parent: Path, out: str, marker: str, owner: str) -> Path:
    path = parent / f".{out}{marker}{owner}-abc123"
    path.mkdir()
    (path / "config.yaml").write_text("seed: 0\n")
    return path


def test_stale_partials_of_ended_processes_are_removed(tmp_path):
    host, me = rundir._host(), rundir._owner()
    dead = _named(tmp_path, "r", ".partial-", f"{host}-{_dead_pid()}-1")
    dead_analysis = _named(tmp_path, "r", ".tmp-analyze-", f"{host}-{_dead_pid()}-1")
    alive = _named(tmp_path, "r", ".partial-", me)
    reused = _named(tmp_path, "r", ".partial-", f"{host}-{os.getpid()}-1")  # pid reused
    other_host = _named(tmp_path, "r", ".partial-", f"0badc0de-{_dead_pid()}-1")
    legacy = _named(tmp_path, "r", ".partial-", "k2j3h4")  # no owner: older trajreg
    other_run = _named(tmp_path, "rr", ".partial-", f"{host}-{_dead_pid()}-1")
    tmp = rundir.partial_dir(tmp_path / "r")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {alive.name, other_host.name, legacy.name, other_run.name, tmp.name}
    assert not any(p.exists() for p in (dead, dead_analysis, reused))


def test_out_that_exists_or_lies_under_a_file(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(UserError, match="output directory already exists"):
        rundir.partial_dir(tmp_path / "r")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match=r"cannot create run directory .*/f/x/r: .*/f is not a "
                                        r"directory"):
        rundir.check_new_out(tmp_path / "f" / "x" / "r")


@pytest.mark.parametrize("renameat2", [True, False])
def test_final_rename_never_replaces_an_out_that_appeared(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(rundir, "_renameat2", lambda *a: False)
    with pytest.raises(UserError, match="appeared while this run was being written"):
        with rundir.atomic_dir(tmp_path / "r") as tmp:
            (tmp / "summary.json").write_text("{}")
            (tmp_path / "r").mkdir()  # empty: a plain rename(2) would replace it
    assert list((tmp_path / "r").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_atomic_dir_removes_the_partial_on_an_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with rundir.atomic_dir(tmp_path / "r"):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real tiny store run (digits subset 256, an MLP of width 8, 2 epochs)."""
    import torch

    from trajreg.run.runner import run
    from trajreg.train.config import load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(tiny(data={"subset": 256}, model={"depth": 2, "width": 8},
                               train={"epochs": 2}))
        out, _ = run(cfg, tmp_path_factory.mktemp("rundir") / "r", figures=False,
                     progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def fresh(run_dir, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    return copy


def _inodes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_ino for p in path.rglob("*") if p.is_file()}


def _write_new(stage: Path) -> None:
    atomic.write_json(stage / "summary.json", {"new": True})
    atomic.replace_atomic(stage / "metrics.parquet", lambda tmp: tmp.write_text("new"))
    atomic.replace_atomic(stage / "extra.png", lambda tmp: tmp.write_text("png"))


@pytest.mark.parametrize("how", ["exchange", "rename", "copy"])
def test_replace_outputs_swaps_in_the_new_files(fresh, monkeypatch, how):
    if how != "exchange":
        monkeypatch.setattr(rundir, "_renameat2", lambda *a: False)
    if how == "copy":  # a file system without hard links: the new files only
        def no_link(*a, **k):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    before = _inodes(fresh)
    mode = fresh.stat().st_mode
    rundir.replace_outputs(fresh, _write_new)
    after = _inodes(fresh)
    assert atomic.read_json(fresh / "summary.json") == {"new": True}
    assert (fresh / "metrics.parquet").read_text() == "new"
    assert (fresh / "extra.png").read_text() == "png"
    # checksums.json is rewritten with them, covering the new files
    unchanged = set(before) - {"summary.json", "metrics.parquet", "checksums.json"}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert after["checksums.json"] != before["checksums.json"]
    files = atomic.read_json(fresh / "checksums.json")["files"]
    assert set(files) == set(after) - {"checksums.json"}
    assert files["extra.png"] == {"size": 3, "crc32": zlib.crc32(b"png")}
    assert fresh.stat().st_mode == mode
    assert [p.name for p in fresh.parent.iterdir()] == ["r"]  # no staging left


def test_replace_outputs_failing_leaves_the_run_as_it_was(fresh):
    before = {name: (fresh / name).read_bytes() for name in ("summary.json", "metrics.parquet")}

    def half(stage: Path) -> None:
        atomic.write_json(stage / "summary.json", {"new": True})
        raise RuntimeError("figures failed")

    with pytest.raises(RuntimeError, match="figures failed"):
        rundir.replace_outputs(fresh, half)
    assert {name: (fresh / name).read_bytes() for name in before} == before
    assert [p.name for p in fresh.parent.iterdir()] == ["r"]


def test_replace_outputs_through_a_symlink_swaps_the_target(fresh):
    link = fresh.parent / "link"
    link.symlink_to(fresh)
    rundir.replace_outputs(link, _write_new)
    assert link.is_symlink() and atomic.read_json(fresh / "summary.json") == {"new": True}


def test_a_finished_run_verifies(fresh):
    assert rundir.verify_run_dir(fresh) == fresh


def test_missing_summary_is_an_unfinished_or_damaged_run(fresh, tmp_path):
    partial = tmp_path / ".r.partial-x"
    shutil.copytree(fresh, partial)
    (partial / "summary.json").unlink()
    with pytest.raises(UserError, match="is not a complete trajreg run"):
        rundir.verify_run_dir(partial)
    (fresh / "summary.json").unlink()
    with pytest.raises(DamagedRun, match=r"run directory damaged: .*/summary\.json: missing"):
        rundir.verify_run_dir(fresh)


def test_checksums_json_covers_every_file(fresh):
    files = atomic.read_json(fresh / "checksums.json")["files"]
    on_disk = {str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {"checksums.json"}
    # the segments' data through the store's own CRC32s: no second read at the end
    assert files["trajectory/x-0000.npy"]["data"] == "sidecar"
    assert files["config.yaml"] == {"size": (fresh / "config.yaml").stat().st_size,
                                    "crc32": zlib.crc32((fresh / "config.yaml").read_bytes())}


def test_a_run_without_checksums_json_verifies(fresh):
    """Written by a trajreg before checksums.json: every other check."""
    (fresh / "checksums.json").unlink()
    assert rundir.verify_run_dir(fresh) == fresh


def test_files_added_after_the_run(fresh):
    (fresh / "notes.txt").write_text("mine")  # beside the run: not read, ignored
    assert rundir.verify_run_dir(fresh) == fresh
    (fresh / "trajectory" / "grad").mkdir()
    (fresh / "trajectory" / "grad" / "trajectory.json").write_text("{}")
    with pytest.raises(DamagedRun, match=r"trajectory/grad/trajectory\.json: "):
        rundir.verify_run_dir(fresh)


@pytest.mark.parametrize("mode", ["off", "replay", "store"])
def test_diverged_and_unmeasured_runs_verify(tmp_path, one_thread, mode):
    """A diverged run (its last row's quantities may be unbounded) and a run in mode
    off (no quantities at all) are not damaged."""
    from trajreg.run.runner import analyze, run
    from trajreg.train.config import load_config

    cfg = load_config(tiny(model={"norm": "none", "activation": "identity"},
                           optim={"name": "sgd", "lr": 50.0}, train={"epochs": 5},
                           record={"mode": mode}))
    out, summary = run(cfg, tmp_path / "r", figures=False, progress=False)
    assert summary.diverged
    assert rundir.verify_run_dir(out) == out
    if mode != "off":
        analyze(out, progress=False)
        assert rundir.verify_run_dir(out) == out


@pytest.mark.parametrize("ends", [[0, 8], [8, 99]])
def test_epoch_ends_outside_the_steps_are_damage(fresh, ends):
    summary = atomic.read_json(fresh / "summary.json")
    summary["epoch_ends"] = ends
    (fresh / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DamagedRun, match=r"summary\.json: epoch_ends .* do not fit its "):
        rundir.verify_run_dir(fresh)
