"""A run killed with SIGKILL left its ``.NAME.partial-*`` directory beside --out for
ever (a full trajectory on disk). The next run to the same --out must remove it once
its process is gone (and never a partial directory whose process still runs: see
tests/run/test_rundir.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli

pytestmark = pytest.mark.slow


def test_next_run_removes_a_killed_runs_partial_directory(tmp_path):
    long, short = tmp_path / "long.yaml", tmp_path / "short.yaml"
    small = tiny(data={"subset": 256}, model={"depth": 2, "width": 8})
    long.write_text(yaml.safe_dump({**small, "train": {"epochs": 500}}))
    short.write_text(yaml.safe_dump({**small, "train": {"epochs": 1}}))
    proc = subprocess.Popen([sys.executable, "-m", "trajreg.cli", "run", str(long), "--out",
                             str(tmp_path / "r")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".r.partial-*/trajectory/x-0000.npy")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(tmp_path.glob(".r.partial-*"))) == 1
    assert cli.main(["run", str(short), "--out", str(tmp_path / "r"), "--no-figures"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.yaml", "r", "short.yaml"]
