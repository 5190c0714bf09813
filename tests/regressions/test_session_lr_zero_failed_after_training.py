"""A hand-written loop (or Lightning) whose warmup starts at learning rate 0 trained to
the end and only then failed: eta_t divides a_t and s_t, so the measurement raised a
raw ``ValueError: lrs must be > 0`` after the whole run, and nothing was written. The
session now refuses the step before it is taken, in one line naming the step and how to
warm up from above 0, and leaves no partial directory (the Hugging Face callback's own
case: test_hf_warmup_lr_zero_failed_after_training.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trajreg.errors import UserError
from trajreg.integrations import RegularitySession


def _loss(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def test_a_step_at_learning_rate_zero_is_refused_before_it_is_taken(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, t / 5))
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    session.before_batch()
    loss = _loss(model, (x, y))
    session.after_batch((x, y), loss)
    loss.backward()
    with pytest.raises(UserError, match=r"optimizer step 0 has learning rate 0\.0 .*warmup"):
        optimizer.step()
    warmup.step()
    assert all((p == q).all() for p, q in zip(model.parameters(), before, strict=True))
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("*partial*"))
