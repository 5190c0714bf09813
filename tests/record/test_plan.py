"""``RecordMode.plan``: the one-pass modes' effective rate from T, and warnings in the
words of the API in use (issue 19)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from trajreg.errors import ConfigError
from trajreg.record.modes.base import CONFIG_WORDS, RecordMode
from trajreg.record.modes.sample import (
    DEFAULT_MIN_STEPS,
    SampleMode,
    StepSampler,
    effective_rate,
    onepass_summary,
    sketch_check,
)
from trajreg.record.modes.sketch import DEFAULT_CHECK_STEPS, SketchMode
from trajreg.record.modes.store import StoreMode
from trajreg.record.recorder import Recorder
from trajreg.train.config import RecordConfig, load_config

SESSION_WORDS = {"steps": "RegularitySession(steps=...)", "rate": "SampleMode(rate=...)",
                 "min_steps": "SampleMode(min_steps=...)", "dim": "SketchMode(dim=...)",
                 "check_rate": "SketchMode(check_rate=...)",
                 "check_min_steps": "SketchMode(check_min_steps=...)"}


def test_effective_rate_is_the_rate_raised_to_min_steps_over_t():
    assert effective_rate(0.05, 200, None) == 0.05  # T unknown: the plain rate
    assert effective_rate(0.05, 200, 300) == pytest.approx(2 / 3)
    assert effective_rate(0.05, 200, 200) == effective_rate(0.05, 200, 50) == 1.0
    assert effective_rate(0.05, 200, 10_000) == 0.05  # a long run: the rate is the floor
    assert effective_rate(0.05, 0, 300) == 0.05 and effective_rate(0.5, 0, 0) == 1.0
    assert effective_rate(0.9, 200, 300) == 0.9


def test_plan_fixes_the_sample_rate_before_training():
    mode = SampleMode(rate=0.05, seed=3)
    assert mode.rate == 0.05 and mode.min_steps == DEFAULT_MIN_STEPS == 200
    mode.plan(300, None)
    assert mode.rate == pytest.approx(200 / 300) and mode.requested_rate == 0.05
    kept = mode.sampler.kept(300)
    assert 160 <= len(kept) <= 240  # Binomial(300, 2/3): 200 +- 8.2
    # the same uniforms: the steps kept at the plain rate are among them, and keep() is
    # the pure function of (seed, stream, rate, t) it was
    assert set(StepSampler(0.05, seed=3).kept(300)) <= set(kept)
    assert kept.tolist() == StepSampler(200 / 300, seed=3).kept(300).tolist()
    mode.plan(10_000, None)
    assert mode.rate == 0.05
    mode.plan(150, None)
    assert mode.rate == 1.0 and mode.sampler.kept(150).tolist() == list(range(150))


def test_a_short_window_warns_in_the_callers_words():
    mode = SampleMode(rate=0.05, min_steps=0)
    with pytest.warns(UserWarning, match=r"^SampleMode\(rate=\.\.\.\): 0.05 of 300 steps") as w:
        mode.plan(300, None, words=SESSION_WORDS)
    assert "SampleMode(min_steps=...)" in str(w[0].message)
    assert "record." not in str(w[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SampleMode().plan(300, None)  # the default min_steps: no warning


def test_unknown_steps_keep_the_plain_rate_and_warn_in_the_callers_words():
    mode = SampleMode(rate=0.05)
    with pytest.warns(UserWarning, match="number of steps is unknown") as w:
        mode.plan(None, None, words=SESSION_WORDS)
    text = str(w[0].message)
    assert mode.rate == 0.05 and mode.words["rate"] == "SampleMode(rate=...)"
    for word in ("RegularitySession(steps=...)", "SampleMode(rate=...)",
                 "SampleMode(min_steps=...)"):
        assert word in text, word
    assert "record." not in text
    sketch = SketchMode(check_rate=0.02)
    with pytest.warns(UserWarning, match="number of steps is unknown") as w:
        sketch.plan(None, None, words=SESSION_WORDS)
    text = str(w[0].message)
    assert sketch.rate == 0.02
    for word in ("RegularitySession(steps=...)", "SketchMode(check_rate=...)",
                 "SketchMode(check_min_steps=...)"):
        assert word in text, word
    with pytest.warns(UserWarning, match=r"\(train\.epochs\).*record\.sample_rate"):
        SampleMode().plan(None, None)  # the default words: the config's keys


def test_words_default_to_the_config_keys_and_unknown_keys_are_refused():
    mode = SampleMode()
    mode.plan(1000, None, words={"rate": "SampleMode(rate=...)"})
    assert mode.words == {**CONFIG_WORDS, "rate": "SampleMode(rate=...)"}
    with pytest.raises(ValueError, match="unknown keys"):
        SampleMode().plan(1000, None, words={"sample_rate": "x"})
    store = StoreMode()
    store.plan(None, None, words=SESSION_WORDS)  # any mode accepts the same call
    assert store.words["steps"] == "RegularitySession(steps=...)"
    assert RecordMode.words is CONFIG_WORDS


def test_the_sketch_check_sample_is_sized_by_count():
    mode = SketchMode(check_rate=0.02, seed=1)
    assert mode.min_steps == DEFAULT_CHECK_STEPS
    mode.plan(188, None)  # the run: 4 check steps at the plain rate
    assert mode.rate == pytest.approx(DEFAULT_CHECK_STEPS / 188)
    assert mode.keep(7)  # b_t at every step, whatever the check sample
    mode.plan(1_000_000, None)
    assert mode.rate == 0.02


def test_plan_after_training_started_is_refused(tmp_path):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mode = SampleMode(rate=0.5)
    mode.plan(10, None)
    rec = Recorder(opt, tmp_path / "t", mode=mode)
    with pytest.raises(RuntimeError, match="after training started"):
        mode.plan(1000, None)
    rec.close()


def test_config_keys_and_defaults():
    rec = RecordConfig()
    assert rec.sample_min_steps == DEFAULT_MIN_STEPS
    assert rec.sketch_check_steps == DEFAULT_CHECK_STEPS
    cfg = load_config(tiny(record={"mode": "sample", "sample_min_steps": 50}))
    mode = SampleMode.from_config(cfg.record, seed=2)
    assert mode.min_steps == 50 and SampleMode.from_config(None).min_steps == 200
    cfg = load_config(tiny(record={"mode": "sketch", "sketch_check_steps": 0}))
    assert SketchMode.from_config(cfg.record).min_steps == 0
    for key, bad in (("sample_min_steps", -1), ("sketch_check_steps", -5)):
        with pytest.raises(ConfigError, match=rf"^record\.{key}: must be a whole number"):
            load_config(tiny(record={"mode": "sample", key: bad}))
    with pytest.raises(ConfigError, match=r"^record\.sample_min_steps: must be an integer"):
        load_config(tiny(record={"mode": "sample", "sample_min_steps": 2.5}))


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
        onepass_summary(table, np.ones(n, bool), np.full(n, 0.05), (0.0, 0.05),
                        words=SESSION_WORDS)
    text = str(w[0].message)
    assert "SampleMode(rate=...)" in text and "SampleMode(min_steps=...)" in text
    assert "record." not in text


def test_sketch_check_compares_gamma_hat_on_the_same_steps():
    rng = np.random.default_rng(1)
    n = 100
    a = 1.0 + rng.random(n)  # b = 1, s = 0: r_t = a_t
    b, s, delta = np.ones(n), np.zeros(n), np.zeros(n)
    same = sketch_check(a, a, b, s, delta, (0.0, 0.05))
    assert same == {"n_window": n, "gamma_rel": {"0.05": 0.0},
                    "a_rel_at_quantile": {"0.05": 0.0}}  # eps 0 is left out
    low = a * 0.8  # a sketch 20% low everywhere
    got = sketch_check(low, a, b, s, delta, (0.05,))
    assert got["gamma_rel"]["0.05"] == pytest.approx(0.2)
    assert got["a_rel_at_quantile"]["0.05"] == pytest.approx(0.2)
    # the summary's sketch_error carries it, and warns in the caller's words
    table = _table(a, b, s, np.full(n, 0.1), sketched=low)
    with pytest.warns(UserWarning, match=r"gamma_hat\(0.05\) is 20.0% off") as w:
        out = onepass_summary(table, np.ones(n, bool), np.zeros(n), (0.0, 0.05),
                              words=SESSION_WORDS)
    assert "SketchMode(dim=...)" in str(w[0].message)
    err = out["sketch_error"]
    assert err["n"] == err["n_window"] == n and err["gamma_rel"]["0.05"] == pytest.approx(0.2)
    with warnings.catch_warnings():  # within 10%: no warning
        warnings.simplefilter("error")
        onepass_summary(_table(a, b, s, np.full(n, 0.1), sketched=a * 0.95),
                        np.ones(n, bool), np.zeros(n), (0.0, 0.05))


def test_default_dim_keeps_x_itself_where_a_sketch_would_not_save_disk():
    from trajreg.record.modes.sketch import DEFAULT_DIM, default_dim

    assert DEFAULT_DIM == 16384
    assert default_dim(1546) == 1546 and default_dim(2 * DEFAULT_DIM) == 2 * DEFAULT_DIM
    assert default_dim(2 * DEFAULT_DIM + 1) == DEFAULT_DIM == default_dim(10**7)
