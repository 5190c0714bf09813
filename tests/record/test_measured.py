"""``Measured.select``: every per-step array, the loss and the mode's columns keep the same
rows; the reference and the summary are the measurement's."""

from __future__ import annotations

import numpy as np

from trajreg.record.measured import Measured


def test_select_keeps_aligned_rows():
    steps = np.arange(6)
    m = Measured(steps=steps, D=steps * 1.0, a=steps * 2.0, s=steps * 3.0, lr=steps * 4.0,
                 loss_star=steps * 5.0, f_star=0.5, reference_step=6, loss=steps * 6.0,
                 columns={"g_dot": steps * 7.0}, summary={"k": 1})
    keep = np.array([True, False, True, True, False, True])
    got = m.select(keep)
    want = np.array([0, 2, 3, 5])
    assert got.steps.tolist() == want.tolist()
    for name, factor in (("D", 1), ("a", 2), ("s", 3), ("lr", 4), ("loss_star", 5),
                         ("loss", 6)):
        assert np.array_equal(getattr(got, name), want * float(factor)), name
    assert np.array_equal(got.columns["g_dot"], want * 7.0)
    assert (got.f_star, got.reference_step, got.summary) == (0.5, 6, {"k": 1})
    assert not got.every_step and m.select(np.ones(6, bool)).every_step
