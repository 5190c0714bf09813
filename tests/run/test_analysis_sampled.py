"""run/analysis.sampled_summary: the step table's one-pass intervals
(``trajreg.principle.onepass_summary``) and their warnings, in the words of the API in
use (issue 19)."""

import warnings

import numpy as np
import pandas as pd
import pytest

from trajreg import principle as P
from trajreg.run.analysis import SKETCH_ERROR_WARN, sampled_summary

SESSION_WORDS = {"steps": "RegularitySession(steps=...)", "rate": "SampleMode(rate=...)",
                 "min_steps": "SampleMode(min_steps=...)", "dim": "SketchMode(dim=...)",
                 "check_rate": "SketchMode(check_rate=...)",
                 "check_min_steps": "SketchMode(check_min_steps=...)"}


def _table(a, b, s, lr, sketched=None):
    n = len(a)
    table = pd.DataFrame({"step": np.arange(0, 2 * n, 2), "a": a, "b": b, "s": s, "lr": lr,
                          "D": np.ones(n)})
    if sketched is not None:  # mode sketch: every step estimated, a_exact on all of them
        table = pd.DataFrame({"step": np.arange(n), "a": sketched, "b": b, "s": s, "lr": lr,
                              "D": np.ones(n), "a_exact": a, "D_exact": np.ones(n)})
    return table


def test_insufficient_samples_warns_in_the_callers_words():
    rng = np.random.default_rng(0)
    n = 20
    table = _table(rng.random(n) + 1, np.ones(n), np.zeros(n), np.full(n, 0.1))
    with pytest.warns(UserWarning, match="insufficient samples") as w:
        out = sampled_summary(table, np.ones(n, bool), np.full(n, 0.05), (0.0, 0.05),
                              words=SESSION_WORDS)
    text = str(w[0].message)
    assert text.startswith("insufficient samples: 20 exactly measured steps in the analysis "
                           "window cannot bound gamma_hat(0.05) on both sides")
    assert "SampleMode(rate=...)" in text and "SampleMode(min_steps=...)" in text
    assert "record." not in text
    with pytest.warns(UserWarning, match=r"raise record\.sample_min_steps or "
                                         r"record\.sample_rate"):
        sampled_summary(table, np.ones(n, bool), np.full(n, 0.05), (0.0, 0.05))
    # the numbers are the principle's, from the table's columns
    cols = [table[c].to_numpy() for c in ("step", "a", "b", "s", "lr")]
    assert out == P.onepass_summary(*cols, np.full(n, 0.05), np.ones(n, bool), (0.0, 0.05))
    with pytest.raises(ValueError, match="unknown keys"):
        sampled_summary(table, np.ones(n, bool), np.full(n, 0.05), (0.05,),
                        words={"sketch_dim": "x"})


def test_a_sketch_off_by_more_than_ten_percent_warns_in_the_callers_words():
    rng = np.random.default_rng(1)
    n = 100
    a = 1.0 + rng.random(n)  # b = 1, s = 0: r_t = a_t
    b, s = np.ones(n), np.zeros(n)
    low = a * 0.8  # a sketch 20% low everywhere
    table = _table(a, b, s, np.full(n, 0.1), sketched=low)
    with pytest.warns(UserWarning, match=r"gamma_hat\(0.05\) is 20.0% off") as w:
        out = sampled_summary(table, np.ones(n, bool), np.zeros(n), (0.0, 0.05),
                              words=SESSION_WORDS)
    assert len(w) == 1  # a sketch's check sample is small by design: no sample warning
    assert str(w[0].message).startswith(
        "sketch_error: on the 100 exactly checked steps of the analysis window")
    assert "SketchMode(dim=...)" in str(w[0].message)
    err = out["sketch_error"]
    assert err["n"] == err["n_window"] == n and err["gamma_rel"]["0.05"] == pytest.approx(0.2)
    assert SKETCH_ERROR_WARN == 0.10
    with warnings.catch_warnings():  # within 10%: no warning
        warnings.simplefilter("error")
        sampled_summary(_table(a, b, s, np.full(n, 0.1), sketched=a * 0.95),
                        np.ones(n, bool), np.zeros(n), (0.0, 0.05))
