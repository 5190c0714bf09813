"""examples/lm_loop.py end to end: an epochless loop with gradient accumulation, whose
session is given each micro-batch's unscaled loss; trajreg leaves its losses alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.examples.common import check_run, load_example

pytestmark = pytest.mark.slow
ITERS = 60


@pytest.fixture(scope="module")
def lm_loop():
    return load_example("lm_loop")


@pytest.fixture(scope="module")
def store_run(lm_loop, tmp_path_factory):
    """One store-mode run: its directory and the loop's own report."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = tmp_path_factory.mktemp("lm-store")
        lm_loop.main(["--out", str(base / "run"), "--iters", str(ITERS), "--no-figures",
                      "--report", str(base / "report.json")])
    finally:
        torch.set_num_threads(threads)
    return base / "run", json.loads((base / "report.json").read_text())


def test_store_run_is_complete_and_exact(store_run):
    out, report = store_run
    summary = check_run(out, ITERS)
    assert summary.loss_check["steps"] == ITERS  # store: every step rebuilt
    # the run's l_t(x_t): the mean of each step's micro-batch losses, as the loop logged it
    table = pd.read_parquet(out / "metrics.parquet")
    assert table["loss"].tolist() == report["losses"]
    assert 5e4 < report["n_params"] < 2e5


def test_sketch_run_is_complete_and_exact(lm_loop, tmp_path, one_thread):
    lm_loop.main(["--out", str(tmp_path / "run"), "--iters", str(ITERS), "--mode", "sketch",
                  "--no-figures"])
    check_run(tmp_path / "run", ITERS)


def test_trajreg_does_not_change_the_training(store_run, lm_loop, tmp_path, one_thread):
    _, report = store_run
    assert lm_loop.main(["--no-trajreg", "--iters", str(ITERS),
                         "--report", str(tmp_path / "off.json")]) is None
    off = json.loads((tmp_path / "off.json").read_text())
    assert not off["trajreg"] and report["trajreg"]
    # bit for bit: the same floats, every iteration, and the same evaluations
    assert off["losses"] == report["losses"] and off["evals"] == report["evals"]
    assert len(off["losses"]) == ITERS and np.isfinite(off["losses"]).all()
