"""kill -9 at seeded points of ``trajreg run`` and ``trajreg analyze``.

After a run is killed, no directory without the ``.partial`` prefix may exist that is
not a complete, verifiable run, and the next run to the same --out removes what the
killed one left. After an analysis is killed, the run still verifies and its summary
and metrics are the old pair or the new pair, never one of each.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli
from trajreg.run import rundir

pytestmark = pytest.mark.slow

CONFIG = tiny(data={"subset": 256, "batch_size": 16}, model={"depth": 2, "width": 8},
              train={"epochs": 3, "threads": 1})


def _start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trajreg.cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, started, delay: float) -> None:
    """SIGKILL ``delay`` seconds after ``started()`` becomes true (the imports, which
    take most of a short command's time on a busy machine, are then behind it)."""
    deadline = time.monotonic() + 120
    while not started() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()


@pytest.mark.parametrize("seed", range(3))
def test_killed_run_never_looks_finished_and_is_cleaned_up(tmp_path, seed):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    proc = _start("run", config, "--out", tmp_path / "r", cwd=tmp_path)
    _kill_after(proc, lambda: any(tmp_path.glob(".r.partial-*")),
                random.Random(seed).uniform(0.0, 3.0))
    for path in tmp_path.iterdir():
        if path.is_dir() and not path.name.startswith("."):
            rundir.verify_run_dir(path)  # finished before the kill: then complete
    if not (tmp_path / "r").exists():
        assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "-q",
                         "--no-figures"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "r"]  # stale removed
    rundir.verify_run_dir(tmp_path / "r")


ANALYZE = ["--eps", "0,0.2", "--delta", "0.01", "--reference", "best"]


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    """A finished run, and the (summary, metrics) bytes before and after ANALYZE."""
    base = tmp_path_factory.mktemp("kill")
    (base / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    assert cli.main(["run", str(base / "c.yaml"), "--out", str(base / "r"), "-q"]) == 0
    shutil.copytree(base / "r", base / "analysed")
    assert cli.main(["analyze", str(base / "analysed"), "-q", *ANALYZE]) == 0
    return base / "r", _pair(base / "r"), _pair(base / "analysed")


def _pair(run: Path) -> tuple[bytes, bytes]:
    return (run / "summary.json").read_bytes(), (run / "metrics.parquet").read_bytes()


@pytest.mark.parametrize("seed", range(4))
def test_killed_analysis_leaves_the_old_or_the_new_outputs(tmp_path, old_and_new, seed):
    finished, old, new = old_and_new
    assert old != new
    run = tmp_path / "r"
    shutil.copytree(finished, run)
    proc = _start("analyze", run, *ANALYZE, cwd=tmp_path)
    _kill_after(proc, proc.stderr.readline, random.Random(seed).uniform(0.0, 1.2))
    rundir.verify_run_dir(run)
    assert _pair(run) in (old, new)
    assert cli.main(["analyze", str(run), "-q", *ANALYZE]) == 0  # removes a stale stage
    assert _pair(run) == new
    assert [p.name for p in tmp_path.iterdir()] == ["r"]
