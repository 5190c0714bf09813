"""Issue 20: a signal arriving after the run directory was renamed into place said
"trajreg: interrupted" although the run was complete, and once ``main`` had returned
SIGINT printed a KeyboardInterrupt traceback from an exit handler and SIGTERM killed the
process by the signal without a word. Now: one line saying the run is complete and kept,
no traceback, and the signal's status (130 / 143: the command was interrupted, and a
shell loop around it should stop)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml

from tests.conftest import tiny

pytestmark = pytest.mark.slow

# runs `trajreg run` as the command line does (cli.main() reading sys.argv) and sends
# itself the signal after the run directory is complete: while the summary is printed
# ("print") or from an exit handler, after main has returned ("exit")
DRIVER = """
import atexit, os, signal, sys, time
when, signum, config, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.argv = ["trajreg", "run", config, "--out", out, "-q", "--no-figures"]
from trajreg import cli
def kill():
    assert os.path.isdir(out)
    os.kill(os.getpid(), signum)
    time.sleep(2)
if when == "print":
    printed = cli._print_summary
    cli._print_summary = lambda summary: (kill(), printed(summary))
else:
    atexit.register(kill)
sys.exit(cli.main())
"""


@pytest.mark.parametrize("when", ["print", "exit"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_run_is_complete_keeps_it_in_one_line(tmp_path, when, signum):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"epochs": 1, "threads": 1})))
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", DRIVER, when, str(int(signum)), str(config),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signum, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"trajreg: interrupted after the run was complete: {out} is kept"], proc.stderr
    assert (out / "summary.json").is_file()
