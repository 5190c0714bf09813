"""The documented plain-loop example, run for real; and the core's import hygiene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.linear_loop import linear_problem, mse, train_with_session
from trajreg.run import analyze

pytestmark = pytest.mark.slow


def test_plain_loop_example(tmp_path):
    sys.path.insert(0, "examples")
    try:
        from plain_loop import main
    finally:
        sys.path.remove("examples")
    out = tmp_path / "run"
    summary = main(["--out", str(out), "--epochs", "2"])
    table = pd.read_parquet(out / "metrics.parquet")
    assert summary.loss_check["equal"] == len(table) == summary.n_steps
    D = np.append(table["D"].to_numpy(), 0.0)
    eta, a, s = table["lr"].to_numpy(), table["a"].to_numpy(), table["s"].to_numpy()
    assert np.allclose(D[:-1] - D[1:], 2 * eta * a - eta**2 * s, rtol=1e-6,
                       atol=1e-9 * D.max())
    again = analyze(out, eps=[0.0, 0.05])
    assert again.window == summary.window and again.gamma_hat == summary.gamma_hat


def test_core_imports_no_framework():
    code = ("import sys, trajreg, trajreg.integrations, trajreg.study, trajreg.cli; "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers', "
            "'tensorboard', 'distributed', 'wandb', 'mlflow') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_session_marks_a_diverged_loop_and_measures_up_to_it(tmp_path):

    from trajreg.integrations import RegularitySession

    model, opt, batch = linear_problem(lr=0.01)
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    train_with_session(session, model, opt, batch, 12, blow_up_at=5)  # step 7's loss: inf
    summary = session.finish(model, mse)
    assert summary.diverged and summary.n_steps == summary.diverged_step >= 6
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert np.isfinite(table["D"]).all() and len(table) == summary.diverged_step
