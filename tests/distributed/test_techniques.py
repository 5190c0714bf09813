"""train.grad_clip, train.accumulate and optim.decay_exclude on 2 CPU processes (gloo):
DDP clips the averaged gradients, FSDP2 the sharded (DTensor) ones by their global norm,
each rank takes its part of every micro-batch; both measure what one process measures,
within the float32 drift of tests/distributed/test_runs.py (RTOL there)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from trajreg.distributed.launch import run
from trajreg.run import rundir
from trajreg.train.config import load_config

pytestmark = pytest.mark.slow

RTOL = 1e-4
CONFIG = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 32, "subset": 512},
    "model": {"name": "mlp", "depth": 3, "width": 16, "norm": "layer"},
    "optim": {"name": "momentum", "lr": 0.05, "weight_decay": 1e-3, "schedule": "cosine",
              "warmup_steps": 4, "decay_exclude": ["norm", "bias"]},
    "train": {"epochs": 2, "threads": 1, "accumulate": 2, "grad_clip": 0.2},
    "record": {"mode": "store", "gradients": True},
}


def test_clipped_accumulated_runs_measure_what_one_process_measures(tmp_path):
    def one(strategy):
        raw = {**CONFIG, "train": dict(CONFIG["train"])}
        if strategy != "single":
            raw["train"]["distributed"] = {"strategy": strategy, "nproc": 2}
        path, _ = run(load_config(raw), tmp_path / strategy, figures=False, progress=False)
        return strategy, pd.read_parquet(path / rundir.METRICS)

    with ThreadPoolExecutor(3) as pool:
        tables = dict(pool.map(one, ["single", "ddp", "fsdp"]))
    single = tables["single"]
    assert len(single) == 32
    assert (single["g_norm2"] <= 0.2**2 * (1 + 1e-5)).all()  # clipped
    assert (single["g_norm2"] >= 0.2**2 * (1 - 1e-5)).mean() > 0.5  # and active
    for strategy in ("ddp", "fsdp"):
        dist = tables[strategy]
        np.testing.assert_array_equal(dist["lr"], single["lr"])
        for column in ("loss", "loss_star", "D", "a", "s", "g_norm2"):
            np.testing.assert_allclose(dist[column], single[column], rtol=RTOL,
                                       err_msg=f"{strategy} {column}")
