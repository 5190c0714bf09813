"""examples/ddp_loop.py end to end: 2 CPU processes under torch.distributed.run, one
exact run directory written by rank 0, nothing left beside it."""

from __future__ import annotations

import pytest

from tests.examples.common import EXAMPLES, check_run
from tests.integrations.test_distributed_callbacks import Launch

pytestmark = pytest.mark.slow


def test_ddp_loop_two_processes(tmp_path):
    # Launch: torch.distributed.run --standalone --nproc_per_node 2, one thread a rank,
    # killed (and the test failed) after a time limit
    launch = Launch(tmp_path, "ddp", "torch", str(EXAMPLES / "ddp_loop.py"), "--out", "{out}",
                    "--epochs", "2", "--no-figures")
    rc, log, _ = launch.wait()
    assert rc == 0, log[-3000:]
    assert "losses rebuilt exactly" in log
    summary = check_run(launch.out, steps=2 * 23, ranks=2)  # 1438 digits, 32 a rank a step
    assert summary.source == "plain"
    # no rank's partial directory left beside the run
    assert [p.name for p in launch.out.parent.iterdir() if p.name.startswith(".")] == []
