"""SIGTERM during ``trajreg run`` killed the process on the spot, leaving its partial
run directory behind, and Ctrl-C printed a KeyboardInterrupt traceback. Both must
remove the partial directory, print one line "trajreg: interrupted" and exit 143 / 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import tiny

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_run_cleans_up_and_says_interrupted(tmp_path, signum, status):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"subset": 256, "batch_size": 8},
                                          model={"depth": 2, "width": 8},
                                          train={"epochs": 500})))
    proc = subprocess.Popen([sys.executable, "-m", "trajreg.cli", "run", str(config), "--out",
                             str(tmp_path / "r")], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".r.partial-*/trajectory/x-0000.npy")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)  # training
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.splitlines()[-1] == "trajreg: interrupted" and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]
