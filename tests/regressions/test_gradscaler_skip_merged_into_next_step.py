"""Regression: a step a GradScaler skipped (``optimizer.step()`` not called, then
``zero_grad``) had its micro-batch counted into the next step's b_t, with no message: 40
steps for 41 iterations. The discarded micro-batches are now dropped, counted in
summary.json (``session.skipped_steps``) and named on stderr."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tests.linear_loop import counted_steps, mlp_problem, mse
from trajreg.integrations import RegularitySession


def test_gradscaler_skipped_steps_are_not_merged_into_the_next(tmp_path, capfd):
    # an initial scale of 2^126 overflows float32 gradients of order 10: the scaler skips
    # steps (halving the scale) until they fit, as fp16 training does at its start
    model, opt, batches = mlp_problem(scale=30.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)
    count = counted_steps(opt)
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    own, skipped = [], 0
    for i in range(30):
        batch = batches[i % len(batches)]
        opt.zero_grad()
        session.before_batch()
        loss = mse(model, batch)
        session.after_batch(batch, loss)
        scaler.scale(loss).backward()
        before = count[0]
        scaler.step(opt)
        scaler.update()
        if count[0] > before:
            own.append(loss.item())
        else:
            skipped += 1
    summary = session.finish(model, mse)
    assert skipped >= 2, "the test needs skipped steps"
    assert summary.n_steps == 30 - skipped
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    # each step's l_t is its own micro-batch's loss, not a mean with the skipped ones
    assert np.array_equal(table["loss"].to_numpy(), np.asarray(own))
    assert summary.session["skipped_steps"] == skipped
    assert summary.session["discarded_batches"] == skipped
    assert summary.loss_check["equal"] == summary.n_steps
    assert f"{skipped} round(s) of micro-batches" in capfd.readouterr().err
