"""Regression: a loss handed to ``after_batch`` already divided by the gradient
accumulation steps gave ``loss_check: {equal: 0, max_abs_diff: 2.23}`` and a normal,
finished run directory whose every b_t was wrong. It is now ``LossMismatch``, with the
ratio named, and nothing written."""

from __future__ import annotations

import pytest

from tests.linear_loop import mlp_problem, mse
from trajreg.integrations import RegularitySession
from trajreg.integrations.session import LossMismatch


def accumulating_loop(session, model, opt, batches, rounds, *, accumulate=4, scaled=False):
    session.start(model, opt)
    for r in range(rounds):
        for j in range(accumulate):
            batch = batches[(accumulate * r + j) % len(batches)]
            session.before_batch()
            loss = mse(model, batch) / accumulate
            # the mistake: the loss handed on is the one divided for backward
            session.after_batch(batch, loss if scaled else loss * accumulate)
            loss.backward()
        opt.step()
        opt.zero_grad()


def test_loss_mismatch_beyond_rtol_is_an_error_and_writes_nothing(tmp_path):
    model, opt, batches = mlp_problem()
    out = tmp_path / "run"
    session = RegularitySession(out, source="plain", figures=False)
    accumulating_loop(session, model, opt, batches, 6, scaled=True)
    with pytest.raises(LossMismatch, match=r"rebuilt/logged = 4 at every such step"):
        session.finish(model, mse)
    assert list(tmp_path.iterdir()) == []  # no run directory, no partial one
