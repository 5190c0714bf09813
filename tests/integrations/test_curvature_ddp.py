"""RegularitySession(curvature=...) under DDP (2 CPU processes, gloo) measures what the
same training in one process measures: every rank differentiates its part of each
sampled step's loss and the Hessian-vector products are averaged over the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trajreg.record.curvature import COLUMNS
from trajreg.run import rundir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LIMIT = 150  # seconds a 2-process run may take on a busy 2-core machine


def _start(tmp: Path, name: str, *args: str) -> subprocess.Popen:
    """``python ARGS`` in the repository root, its output in ``tmp/NAME.log`` (never beside
    the script: an absolute script path joined to tmp is the script's own path)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - the child's
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_ddp_curvature_equals_one_process(tmp_path: Path) -> None:
    script = str(HERE / "dist_curvature.py")
    procs = [_start(tmp_path, "ddp", "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", script, str(tmp_path)),
             _start(tmp_path, "single", script, "--single", str(tmp_path))]
    for p in procs:
        p.wait(timeout=LIMIT)
    for name in ("ddp-0", "ddp-1", "single-0"):
        outcome = json.loads((tmp_path / f"{name}.json").read_text())
        log = tmp_path / f"{name.split('-')[0]}.log"
        assert outcome[0] == "ok", (name, outcome, log.read_text()[-3000:])
    ddp, one = (rundir.read_metrics(tmp_path / n) for n in ("ddp", "single"))
    assert set(COLUMNS) <= set(ddp.columns)
    sampled = one["lambda_max"].notna().to_numpy()
    assert 3 <= sampled.sum() < len(one)  # rate 0.5 of 12 steps
    for column in ("lambda_max", "curv_update", "critical_sharpness"):
        x, y = ddp[column].to_numpy(), one[column].to_numpy()
        assert np.array_equal(np.isfinite(x), sampled), column
        assert np.allclose(x[sampled], y[sampled], rtol=1e-6,
                           atol=1e-6 * np.abs(y[sampled]).max()), column
    assert (ddp["lambda_max_converged"][sampled] == 1).all()
    a, b = (rundir.read_summary(tmp_path / n).curvature for n in ("ddp", "single"))
    assert np.isclose(a["lambda_max_end"], b["lambda_max_end"], rtol=1e-6)
    assert a["median"]["lambda_max"] > 0
