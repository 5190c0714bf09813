"""record.curvature on a DDP run (2 CPU processes, gloo) against the same run in one
process; FSDP2 refused (no double backward through fully_shard).

Under DDP every rank differentiates its part of step t's minibatch and the
Hessian-vector products and losses are averaged over the ranks, so H is the Hessian of
the global minibatch's loss. The curvature is measured at the distributed run's own x_t,
which differ from the single process's by float32 rounding (tests/distributed/test_runs.py),
so the columns agree to that rounding: measured within 4e-8 (lambda_max), 2e-6
(curv_update), 8e-7 (lambda_max_precond) relative, critical_sharpness equal (its
bisection takes the same decisions); the test allows RTOL = 1e-4, as test_runs.py does
for D, a, s.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from trajreg.distributed.launch import run
from trajreg.distributed.measure import RankContext
from trajreg.errors import ConfigError
from trajreg.run import rundir, runner
from trajreg.run.runner import RunContext
from trajreg.train.config import load_config
from trajreg.train.data import load_data
from trajreg.train.loop import TrainLog, build

RTOL = 1e-4
COLUMNS = ("lambda_max", "curv_update", "critical_sharpness", "lambda_max_precond")

# 8 steps an epoch, 16 in all; the curvature sample of seed 0 at rate 0.2 is steps 0, 5, 12
BASE = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 32, "subset": 256},
    "model": {"name": "mlp", "depth": 2, "width": 16, "norm": "none"},
    "optim": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "threads": 1, "accumulate": 2},
    "record": {"mode": "store", "curvature": {"rate": 0.2}},
}


def _config(strategy: str | None = None):
    raw = json.loads(json.dumps(BASE))
    if strategy is not None:
        raw["train"]["distributed"] = {"strategy": strategy, "nproc": 2, "backend": "gloo"}
    return load_config(raw)


@pytest.mark.slow
def test_ddp_curvature_is_the_single_process_curvature(tmp_path):
    """Adam (the preconditioned sharpness too) with 2 micro-batches a step: each rank
    takes its part of each micro-batch with the micro-batch's random state."""
    torch.set_num_threads(1)
    single_dir, single = run(_config(), tmp_path / "single", figures=False, progress=False)
    ddp_dir, ddp = run(_config("ddp"), tmp_path / "ddp", figures=False, progress=False)
    one = pd.read_parquet(single_dir / rundir.METRICS)
    dist = pd.read_parquet(ddp_dir / rundir.METRICS)
    sampled = one["lambda_max"].notna().to_numpy()
    assert one["step"][sampled].tolist() == [0, 5, 12]
    np.testing.assert_array_equal(dist["lambda_max"].notna(), sampled)
    for column in COLUMNS:
        ref = one[column].to_numpy()[sampled]
        assert np.isfinite(ref).all(), column
        np.testing.assert_allclose(dist[column].to_numpy()[sampled], ref, rtol=RTOL,
                                   err_msg=column)
    for column in ("lambda_max_iterations", "lambda_max_converged", "eos_threshold"):
        np.testing.assert_array_equal(dist[column], one[column], err_msg=column)
    assert ddp.curvature is not None and single.curvature is not None
    assert ddp.curvature["steps"] == single.curvature["steps"] == 3
    assert ddp.curvature["compared"] == "lambda_max_precond"
    assert math.isclose(ddp.curvature["lambda_max_star"], single.curvature["lambda_max_star"],
                        rel_tol=RTOL)
    # rank 0 kept the rows, as it keeps the trajectory
    assert sorted(p.name for p in (ddp_dir / "trajectory" / "curvature").iterdir()) == [
        f"step-{t:08d}.npz" for t in (0, 5, 12)]
    again = runner.analyze(ddp_dir, eps=[0.0, 0.1], progress=False)  # an ordinary run
    assert again.curvature["lambda_max_star"] == ddp.curvature["lambda_max_star"]
    np.testing.assert_array_equal(pd.read_parquet(ddp_dir / rundir.METRICS)["lambda_max"],
                                  dist["lambda_max"])


def test_a_ranks_step_loss_is_its_part_and_the_parts_average_to_the_minibatch_loss():
    """What each DDP rank differentiates: its part of each micro-batch (not the whole
    minibatch), whose mean over the ranks is l_t."""
    cfg = _config()
    data = load_data(cfg.data)
    model, _, _ = build(cfg, data)
    log = TrainLog()
    whole = RunContext(cfg, data, log, model, {}, ".")
    parts = [RankContext(cfg, data, log, model, ".", rank=r, world=2) for r in range(2)]
    for t in (0, 5):
        total = whole.step_loss(t).item()
        mine = [ctx.step_loss(t).item() for ctx in parts]
        assert all(abs(m - total) > 1e-4 for m in mine)
        assert sum(mine) / 2 == pytest.approx(total, rel=1e-6)


def test_fsdp_curvature_refused_with_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(tiny(train={"distributed": {"strategy": "fsdp"}},
                         record={"mode": "store", "curvature": {"rate": 0.5}}))
    text = str(info.value)
    assert "\n" not in text
    assert "record.curvature: not supported with train.distributed.strategy fsdp" in text
    assert f"torch {torch.__version__.split('+')[0]}" in text
    load_config(tiny(train={"distributed": {"strategy": "ddp"}},
                     record={"mode": "store", "curvature": {"rate": 0.5}}))
