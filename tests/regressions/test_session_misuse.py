"""Regression: misusing ``RegularitySession`` gave internal errors or wrong numbers:
``finish()`` without ``start()`` an AttributeError, batches without ``start()`` a bare
AssertionError, a second ``finish()`` a FileNotFoundError, ``start()`` twice a false
divergence and a partial directory left behind, an optimizer that does not hold the
model's parameters gamma_hat = +inf with D_t = 0 and exit 0, and ``optimizer.step()``
twice per batch ``diverged: true`` at step 1. Each is now a ``SessionMisuse`` saying
what to do, at the point of misuse, or (the second step) a step left unmeasured."""

from __future__ import annotations

import pytest
import torch

from tests.linear_loop import mlp_problem, mse, plain_steps
from trajreg.integrations import RegularitySession
from trajreg.integrations.session import SessionMisuse


def test_finish_before_start(tmp_path):
    model, _, _ = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain")
    with pytest.raises(SessionMisuse, match=r"finish\(\) before start\(\)"):
        session.finish(model, mse)


def test_batches_before_start(tmp_path):
    session = RegularitySession(tmp_path / "run", source="plain")
    with pytest.raises(SessionMisuse, match=r"before_batch\(\) before start\(\)"):
        session.before_batch()
    with pytest.raises(SessionMisuse, match=r"after_batch\(\) before start\(\)"):
        session.after_batch(None, 0.0)


def test_after_batch_without_before_batch(tmp_path):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain")
    session.start(model, opt)
    with pytest.raises(SessionMisuse, match=r"after_batch\(\) without before_batch\(\)"):
        session.after_batch(batches[0], 1.0)
    session.abort()


def test_finish_twice(tmp_path):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    plain_steps(session, model, opt, batches, 8)
    session.finish(model, mse)
    with pytest.raises(SessionMisuse, match="finish\\(\\) was called twice: the first call "
                                            "wrote"):
        session.finish(model, mse)
    assert (tmp_path / "run" / "summary.json").is_file()


def test_start_twice_keeps_the_run(tmp_path):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    with pytest.raises(SessionMisuse, match=r"start\(\) was called on a session that is "
                                            "already started"):
        session.start(model, opt)
    plain_steps(session, model, opt, batches, 8)
    summary = session.finish(model, mse)
    assert not summary.diverged and summary.n_steps == 8
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no partial directory


def test_optimizer_of_another_model(tmp_path):
    model, _, _ = mlp_problem()
    other = torch.nn.Linear(4, 1)
    session = RegularitySession(tmp_path / "run", source="plain")
    with pytest.raises(SessionMisuse, match="the optimizer holds none of the model's "
                                            "parameters"):
        session.start(model, torch.optim.SGD(other.parameters(), lr=0.1))
    assert list(tmp_path.iterdir()) == []


def test_two_optimizer_steps_per_batch_are_not_a_divergence(tmp_path):
    model, opt, batches = mlp_problem()
    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    plain_steps(session, model, opt, batches, 16,
                lambda _: opt.step())  # again, on the same gradient
    summary = session.finish(model, mse)
    assert not summary.diverged and summary.n_steps == 32
    assert summary.session["steps_without_batch"] == 16
