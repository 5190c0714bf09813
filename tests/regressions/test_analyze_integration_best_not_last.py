"""``trajreg analyze`` of a run recorded by an integration (session or callback) whose
lowest epoch loss F_k is not at its last epoch: the analysis looks for the best
reference too, and, with no training config to re-measure with, stops with
``RUN: no training config to re-measure with`` (runner.py marks that line unreachable).
Found with examples/hf_gpt2_text.py (20 steps, an epoch every 2 steps). Now a run
without a training config has no best reference in the analysis (its ``--reference``
is final only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trajreg.integrations import RegularitySession
from trajreg.run import analyze


def _loss(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def test_analyze_session_run_whose_last_epoch_is_not_best(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    session = RegularitySession(tmp_path / "run", source="plain", figures=False,
                                interpolation=False)
    session.start(model, optimizer)
    g = torch.Generator().manual_seed(1)
    for epoch in range(3):
        for _ in range(4):
            x = torch.randn(8, 4, generator=g)
            y = x.sum(1, keepdim=True) + (5.0 if epoch == 2 else 0.0)  # last epoch: worse
            session.before_batch()
            loss = _loss(model, (x, y))
            session.after_batch((x, y), loss)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        session.end_epoch()
    summary = session.finish(model, _loss)
    assert summary.loss_check["equal"] == summary.loss_check["steps"] == 12
    again = analyze(tmp_path / "run", eps=[0.0])
    assert again.gamma_hat is not None
