"""Regression: a loop that never calls ``end_epoch()`` (nanoGPT's) is one epoch, and the
interpolation evaluated F over all of its micro-batches at every point of the segment
x_0 -> x*: 5-6x the plain script's time. F is now the mean over a bounded evaluation set
(``eval_batches``), and the session says on stderr that the run is one epoch."""

from __future__ import annotations

from tests.linear_loop import mlp_problem, mse, plain_steps
from trajreg.integrations import RegularitySession


def test_epochless_loop_evaluates_f_on_a_bounded_set(tmp_path, capfd):
    model, opt, batches = mlp_problem()
    calls = [0]

    def counted(m, b):
        calls[0] += 1
        return mse(m, b)

    session = RegularitySession(tmp_path / "run", source="plain", figures=False)
    session.start(model, opt)
    T = 200
    plain_steps(session, model, opt, batches, T)
    summary = session.finish(model, counted)
    # l_t at x_t and at x* for every step, and the 21 points of the segment x_0 -> x* on
    # the default evaluation set (32 steps): nothing that grows with T beyond that (it was 21 passes
    # over all T steps)
    assert calls[0] <= 2 * T + 21 * 32
    assert summary.mli is not None and summary.session["epochs"] == "none"
    assert summary.window == [0, int(0.9 * T)]
    assert "end_epoch() was never called" in capfd.readouterr().err
