"""The GPT on 2 CPU processes (gloo) with the existing launcher: DDP and FSDP2 (sharded one
transformer block at a time, then the root) measure what one process measures.

Tolerance, as tests/distributed/test_runs.py: the ranks' gradients are two half-batch
means averaged, not one mean, so the float32 iterates drift by rounding from the first
step; quantities that are not near zero are compared with RTOL = 1e-4, and those that
are differences or inner products around zero (b_t, g_dot_t, and rsi_t, cos_g_t, which
are g_dot_t over positive norms) with 1e-4 times their largest magnitude. Measured on
this config (32 AdamW steps, clipped at 1, pydoc's text): the largest relative
difference of l_t, l_t(x*), D_t, a_t, s_t is 8.7e-7 under DDP and 6.7e-6 under FSDP2;
of g_norm2 3.6e-6 and 2.2e-5; gamma_hat(0.05) 3.5e-8 and 1.5e-7.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from torch import nn

from trajreg.distributed.launch import run
from trajreg.distributed.train import shard_units
from trajreg.run import rundir
from trajreg.train.config import load_config
from trajreg.train.transformer import GPT

pytestmark = pytest.mark.slow

RTOL = 1e-4
STEPS = 2 * 256 // 16
CONFIG = {
    "seed": 0,
    "data": {"name": "text", "batch_size": 16, "subset": 256},
    "model": {"name": "gpt", "depth": 2, "width": 32, "heads": 2, "block_size": 32,
              "norm": "layer"},
    "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.1,
              "decay_exclude": ["norm", "bias"], "warmup_steps": 10},
    "train": {"epochs": 2, "grad_clip": 1.0, "threads": 1},
    "record": {"mode": "store", "gradients": True},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt-dist")

    def one(strategy: str):
        raw = json.loads(json.dumps(CONFIG))
        if strategy != "single":
            raw["train"]["distributed"] = {"strategy": strategy, "nproc": 2,
                                           "backend": "gloo"}
        path, summary = run(load_config(raw), root / strategy, figures=False,
                            progress=False)
        return strategy, (summary, pd.read_parquet(path / rundir.METRICS))

    # one after the other: the runner's pre-flight sizing traces the model with torch.fx,
    # which patches nn.Module.__call__ process-wide, so two runs started in threads of
    # one process can trace into each other ("module is not installed as a submodule")
    return dict(one(strategy) for strategy in ("single", "ddp", "fsdp"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distributed_gpt_measures_what_one_process_measures(runs, strategy):
    one, single = runs["single"]
    other, dist = runs[strategy]
    assert len(single) == len(dist) == STEPS
    np.testing.assert_array_equal(dist["step"], single["step"])
    np.testing.assert_array_equal(dist["lr"], single["lr"])
    for column in ("loss", "loss_star", "D", "a", "s", "g_norm2", "eb", "cos_v"):
        np.testing.assert_allclose(dist[column], single[column], rtol=RTOL,
                                   err_msg=f"{strategy} {column}")
    for column in ("b", "g_dot", "rsi", "cos_g"):  # around zero: against the largest
        ref = single[column].to_numpy()
        np.testing.assert_allclose(dist[column], ref, rtol=0, atol=RTOL * np.abs(ref).max(),
                                   err_msg=f"{strategy} {column}")
    assert (single["g_norm2"] <= 1.0 + 1e-5).all()  # clipped at 1
    np.testing.assert_allclose(other.full_loss, one.full_loss, rtol=RTOL)
    assert one.full_loss[-1] < one.full_loss[0] - 1.0  # it learned
    assert other.window == one.window
    for key, value in one.gamma_hat.items():
        assert other.gamma_hat[key] == pytest.approx(value, rel=1e-3), key
    assert other.gamma_bar == pytest.approx(one.gamma_bar, rel=1e-3)


def test_the_gpt_declares_its_blocks_as_shard_units():
    model = GPT(vocab=11, block_size=8, width=16, depth=3, heads=2, dropout=0.0,
                norm="layer", position="pre", skip=True, qk_norm=False, tie=True)
    assert shard_units(model) == list(model.blocks)
    # a model declaring none: every module owning parameters, children before parents
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 1)))
    assert shard_units(net) == [net[2][0], net[0]]


FSDP_UNITS = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from trajreg.distributed.train import wrap
    from trajreg.train.transformer import GPT
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0,
                            world_size=1)
    model = GPT(vocab=11, block_size=8, width=16, depth=3, heads=2, dropout=0.0,
                norm="layer", position="pre", skip=True, qk_norm=False, tie=True)
    model = wrap(model, "fsdp", 1, "cpu")
    print(sorted(name or "<root>" for name, m in model.named_modules()
                 if isinstance(m, FSDPModule)))
    model(torch.zeros(2, 8, dtype=torch.long)).sum().backward()  # gathers, runs
    dist.destroy_process_group()
""")


def test_fsdp_shards_each_block_and_the_root(tmp_path):
    """fully_shard on each block and on the root only (the tied embedding and head stay
    with the root), in a process of its own: one rank, gloo."""
    done = subprocess.run([sys.executable, "-c", FSDP_UNITS, str(tmp_path / "rendezvous")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == str(["<root>", "blocks.0", "blocks.1", "blocks.2"])
