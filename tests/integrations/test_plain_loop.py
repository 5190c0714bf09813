"""The documented plain-loop example, run for real; and the core's import hygiene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

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
            "'tensorboard', 'distributed') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_session_marks_a_diverged_loop_and_measures_up_to_it(tmp_path):
    import torch

    from trajreg.integrations import RegularitySession

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def loss_fn(m, batch):
        return torch.nn.functional.mse_loss(m(batch[0]), batch[1])

    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    for step in range(12):
        if step == 5:  # blow up: the loss of step 7 is no longer finite
            for g in opt.param_groups:
                g["lr"] = 1e30
        session.before_batch()
        loss = loss_fn(model, (x, y))
        session.after_batch((x, y), loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 4 == 3:
            session.end_epoch()
    summary = session.finish(model, loss_fn)
    assert summary.diverged and summary.n_steps == summary.diverged_step >= 6
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert np.isfinite(table["D"]).all() and len(table) == summary.diverged_step
