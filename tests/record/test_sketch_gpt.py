"""Sketch mode on a GPT where the sketch is a real one: gamma_hat(0.05) within 10% of
store mode's on the same trajectory (same seed, deterministic CPU), for 3 seeds.

The GPT (width 64, depth 2, 2 heads, block 32, pydoc's 104-token vocabulary) has
d = 108,800 parameters; the default sketch_dim is k = 16,384 (``default_dim``: d > 2 k),
k / d = 0.15. 300 steps (6 epochs of 50). Measured (this file's config, seeds 0, 1, 2):
|gamma_hat(0.05) sketch / store - 1| = 2.9%, 2.0%, 1.0% at k = 16,384; at k = 4,096,
4.3%, 3.0%, 7.0%. The summary's own estimate (sketch_error.gamma_rel) at
k = 16,384: 4.2%, 0.2%, 0.7%.
"""

from __future__ import annotations

import pytest

from trajreg.record.modes.sketch import default_dim
from trajreg.run.runner import run
from trajreg.train.config import load_config
from trajreg.train.data import load_data
from trajreg.train.loop import build

pytestmark = pytest.mark.slow

D = 108_800
CONFIG = {
    "data": {"name": "text", "batch_size": 16, "subset": 800},
    "model": {"name": "gpt", "depth": 2, "width": 64, "heads": 2, "block_size": 32,
              "norm": "layer"},
    "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.1,
              "decay_exclude": ["norm", "bias"], "warmup_steps": 10},
    "train": {"epochs": 6, "grad_clip": 1.0, "threads": 1},
    "analysis": {"eps": [0.0, 0.05]},
}
TOLERANCE = 0.10


def _config(seed: int, record: dict):
    return load_config({**CONFIG, "seed": seed, "record": {**record, "gradients": False}})


def test_the_model_is_sketched_not_kept():
    cfg = _config(0, {"mode": "sketch"})
    model, _, _ = build(cfg, load_data(cfg.data, block_size=cfg.model.block_size))
    assert sum(p.numel() for p in model.parameters()) == D
    assert cfg.record.sketch_dim is None and default_dim(D) < D / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sketch_gamma_hat_within_10_percent_of_store(tmp_path, seed):
    _, store = run(_config(seed, {"mode": "store"}), tmp_path / "store", figures=False,
                   progress=False)
    out, sketch = run(_config(seed, {"mode": "sketch"}), tmp_path / "sketch", figures=False,
                      progress=False)
    assert store.n_steps == sketch.n_steps == 300
    assert '"identity": false' in (out / "trajectory" / "sample.json").read_text()
    exact, estimate = store.gamma_hat["0.05"], sketch.gamma_hat["0.05"]
    assert abs(estimate / exact - 1) < TOLERANCE, (seed, estimate, exact)
    # the sketch's own error estimate is of the same order as its real error
    assert sketch.sketch_error["gamma_rel"]["0.05"] < TOLERANCE
