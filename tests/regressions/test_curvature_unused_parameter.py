"""record.curvature failed on a model with a parameter its loss does not use (a
pretrained model's unused head, common under the integrations) or uses linearly: the
Hessian-vector products raised ("... appears to not have been used in the graph", "...
does not require grad"), and with Adam the unused parameter's missing optimizer state
dropped the preconditioner, so lambda_max_precond was NaN at every step. Such parameters
have zero rows in H; Adam starts an unused parameter's v at 0."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trajreg.record.curvature import measure_step, read_rows
from trajreg.record.recorder import Recorder


class WithUnused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Linear(3, 1)
        self.head = torch.nn.Linear(3, 2)  # never called
        self.shift = torch.nn.Parameter(torch.zeros(1))  # enters the loss linearly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_unused_parameters_have_zero_curvature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WithUnused()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def loss() -> torch.Tensor:
        # shift's gradient is a constant: a tensor without a graph
        return (model(x) - y).pow(2).mean() + 0.1 * model.shift.sum()

    with Recorder(opt, tmp_path, mode="store", curvature=(1.0, 0)):
        for _ in range(2):
            opt.zero_grad()
            loss().backward()
            opt.step()
    rows = read_rows(tmp_path)
    assert len(rows) == 2 and rows[-1].precond is not None
    row = rows[-1]
    params = list(model.parameters())
    with torch.no_grad():
        at = 0
        for p in params:
            p.copy_(torch.from_numpy(row.x[at : at + p.numel()]).view(p.shape))
            at += p.numel()
    c = measure_step(params, loss, row, iterations=20, tol=1e-9, seed=0)
    # H of the mean squared error of a linear model: 2 [X 1]^T [X 1] / n on (w, b)
    z = torch.cat([x, torch.ones(8, 1)], dim=1).double()
    exact = float(torch.linalg.eigvalsh(2 * z.T @ z / 8)[-1])
    assert c.lambda_max == pytest.approx(exact, rel=1e-5)
    assert math.isfinite(c.lambda_max_precond) and math.isfinite(c.curv_update)
    assert np.isfinite(row.precond).all()
