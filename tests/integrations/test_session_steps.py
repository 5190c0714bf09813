"""RegularitySession on loops whose steps are not one micro-batch each: gradient
accumulation, steps a GradScaler skips, gradients cleared mid-round, a step with no
micro-batch, loops without epochs; and the loss check that refuses a wrong loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.linear_loop import mlp_problem, mse, plain_steps
from trajreg.integrations import RegularitySession
from trajreg.integrations.session import LossMismatch
from trajreg.run.summary import read_summary


def test_accumulation_rounds_with_zero_grad_keep_every_micro_batch(tmp_path):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    logged = []
    for r in range(8):  # rounds of 3 micro-batches, zero_grad at each round's start
        opt.zero_grad()
        losses = []
        for j in range(3):
            batch = batches[(3 * r + j) % len(batches)]
            session.before_batch()
            loss = mse(model, batch)
            session.after_batch(batch, loss)
            (loss / 3).backward()
            losses.append(loss.item())
        opt.step()
        logged.append(np.mean(losses))
        if r % 4 == 3:
            session.end_epoch()
    summary = session.finish(model, mse)
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert summary.session["skipped_steps"] == 0
    assert summary.loss_check["equal"] == summary.n_steps == 8
    # l_t is the mean of the step's three micro-batch losses (rebuilt bit for bit)
    assert np.allclose(table["loss"].to_numpy(), logged, rtol=1e-6, atol=0)


def test_zero_grad_mid_round_drops_the_cleared_micro_batches(tmp_path, capfd):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    logged = []
    for r in range(8):
        opt.zero_grad(set_to_none=(r % 2 == 0))  # both ways of clearing
        for j in range(3):
            if r == 5 and j == 2:  # the script discards the round's first two
                opt.zero_grad(set_to_none=False)
            batch = batches[(3 * r + j) % len(batches)]
            session.before_batch()
            loss = mse(model, batch)
            session.after_batch(batch, loss)
            loss.backward()
            if j == 2:
                logged.append(loss.item() if r == 5 else None)
        opt.step()
    summary = session.finish(model, mse)
    assert summary.session["skipped_steps"] == 1
    assert summary.session["discarded_batches"] == 2
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert table["loss"].iloc[5] == pytest.approx(logged[5], rel=1e-7)
    assert "had their gradients cleared without an optimizer step" in capfd.readouterr().err


def test_a_step_without_a_micro_batch_is_left_unmeasured(tmp_path, capfd):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)

    def after_step(i: int) -> None:
        if i == 6:
            opt.step()  # a second step on the same gradient: no micro-batch of its own
        if i % 4 == 3:
            session.end_epoch()

    plain_steps(session, model, opt, batches, 12, after_step)
    summary = session.finish(model, mse)
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert summary.n_steps == 13 and not summary.diverged
    assert 7 not in set(table["step"]) and len(table) == 12
    assert summary.session["steps_without_batch"] == 1
    assert summary.gamma_hat_ci is None  # a store run missing a step is no random sample
    assert np.isfinite(table["b"]).all()
    assert "1 optimizer step(s) were taken with no micro-batch" in capfd.readouterr().err


def test_loss_rtol_admits_rounding_but_not_another_batch(tmp_path):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "a", source="plain", figures=False, loss_rtol=1e-3)
    session.start(model, opt)
    for i in range(8):
        session.before_batch()
        loss = mse(model, batches[i])
        session.after_batch(batches[i], loss * (1 + 1e-5))  # rounding-sized differences
        opt.zero_grad()
        loss.backward()
        opt.step()
    summary = session.finish(model, mse)
    assert summary.loss_check["equal"] == 0 and summary.session["loss_rtol"] == 1e-3

    model, opt, batches = mlp_problem()
    out = tmp_path / "b"
    session = RegularitySession(out, source="plain", figures=False)
    session.start(model, opt)
    for i in range(8):
        session.before_batch()
        loss = mse(model, batches[i])
        session.after_batch(batches[i + 1], loss)  # not the batch the forward pass saw
        opt.zero_grad()
        loss.backward()
        opt.step()
    with pytest.raises(LossMismatch, match=r"8 of 8 checked steps differ by more than "
                                           r"loss_rtol=1e-05 \(step 0: logged") as info:
        session.finish(model, mse)
    assert "looks scaled" not in str(info.value)
    assert not out.exists()


def test_epoch_steps_cut_an_epochless_loop_into_epochs(tmp_path):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain", figures=False,
                                epoch_steps=10)
    session.start(model, opt)
    plain_steps(session, model, opt, batches, 45)
    summary = session.finish(model, mse)
    assert summary.epoch_ends == [10, 20, 30, 40, 45]
    assert summary.session["epochs"] == "epoch_steps"
    assert len(read_summary(tmp_path / "run").full_loss) == 6


@pytest.mark.parametrize("kwargs, match", [
    ({"epoch_steps": 0}, "epoch_steps: must be an integer >= 1"),
    ({"eval_batches": 2.5}, "eval_batches: must be an integer >= 1"),
    ({"steps": True}, "steps: must be an integer >= 1"),
    ({"loss_rtol": -1.0}, r"loss_rtol: must be a number in \[0, 1\)"),
])
def test_bad_session_options_are_refused(tmp_path, kwargs, match):
    from trajreg.errors import UserError

    with pytest.raises(UserError, match=match):
        RegularitySession(tmp_path / "run", source="plain", **kwargs)
