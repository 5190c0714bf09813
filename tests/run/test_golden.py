"""A tiny run's summary.json and metrics.parquet against a stored golden copy.

Catches a silent change of the public format (a renamed, dropped or retyped key)
and of the numbers (same config and seed, same torch build). The run is deterministic
on one machine, but float32 training differs in the last bits between CPUs (AVX2,
AVX-512 and AMX pick different kernels): measured against the golden files, gamma_hat(0)
is 0.7708310 on the machine that wrote them, 0.7708298 on an AMD EPYC, and the largest
relative difference of any value 1.8e-6 (15 float32 ulps). Under the second kernel
selection of ``make test-kernels`` on that EPYC (2026-12-06): 18.4 ulps with
ATEN_CPU_CAPABILITY=default alone, 13 with MKL_CBWR=COMPATIBLE alone, 7 with all its
variables. Values are compared within 1024 float32 ulps: 55x that, and far below what a
changed formula moves (1e-3 and more; tests/regressions/test_golden_tolerance.py).

Integers and flags (window, epoch ends, bound.holds, mli.monotone) are compared
exactly, and the fractions (accuracies, rp_fraction, star_convex_fraction) within the
tolerance, which for a fraction of 21 steps or 359 examples is equality: each is decided
by a float far from its threshold in this run (window: the cap 0.9 T; the closest
decisions are a train example's top-two logits, 1.7e-5 apart relative to the logits,
and two r_t 4e-4 apart; the mli losses fall by at least 1.7e-3 a point), 10x and more
the measured difference.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trajreg.run.runner import run
from trajreg.train.config import load_config

GOLDEN = Path(__file__).parent / "golden"
RTOL = 1024 * float(np.finfo(np.float32).eps)  # about 1.2e-4
CONFIG = {
    "seed": 3,
    "data": {"name": "digits", "batch_size": 64, "subset": 512},
    "model": {"name": "mlp", "depth": 3, "width": 16, "activation": "relu", "norm": "batch"},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 3, "threads": 1},
    "record": {"mode": "store"},
    "analysis": {"eps": [0.0, 0.05]},
}


def _same(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_tiny_store_run_matches_the_golden_files(tmp_path):
    out, _ = run(load_config(CONFIG), tmp_path / "run", figures=False, progress=False)
    got = json.loads((out / "summary.json").read_text())
    want = json.loads((GOLDEN / "store_summary.json").read_text())
    _same(want, got, "summary")
    table = pd.read_parquet(out / "metrics.parquet")
    metrics = json.loads((GOLDEN / "store_metrics.json").read_text())
    assert list(table.columns) == metrics["columns"] and len(table) == metrics["rows"]
    _same(metrics["sums"], {c: float(table[c].sum()) for c in table.columns}, "metrics")
