"""``RecordMode.plan``: the one-pass modes' effective rate from T, and warnings in the
words of the API in use (issue 19)."""

from __future__ import annotations

import warnings

import numpy as np
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


def test_effective_rate_brute_force():
    """Over a grid: the rate is the smallest R in [rate, 1] whose expected kept count
    R T reaches min(min_steps, T) (T unknown: ``rate``)."""
    for rate in (0.0, 0.01, 0.05, 0.5, 1.0):
        for min_steps in (0, 1, 7, 200):
            assert effective_rate(rate, min_steps, None) == rate
            for steps in (0, 1, 2, 6, 7, 8, 199, 200, 201, 300, 4000, 10**6):
                got = effective_rate(rate, min_steps, steps)
                if steps == 0:  # nothing to sample: every step, as a run of <= min_steps
                    assert got == 1.0
                    continue
                grid = np.linspace(0, 1, 100_001)
                ok = grid[(grid >= rate - 1e-12)
                          & (grid * steps >= min(min_steps, steps) - 1e-9)]
                assert got == pytest.approx(max(rate, ok[0]), abs=1e-5), (rate, min_steps, steps)
                assert rate <= got <= 1.0 and got * steps >= min(min_steps, steps) - 1e-9


def test_default_min_steps_comment_binomial():
    """DEFAULT_MIN_STEPS's comment: a 300-step run samples at 2/3; half the run (150
    steps) expects 100 kept, 72 is 4.8 sd below; a window of 41% of the run (123 steps)
    holds >= 72 kept steps with probability >= 97.5%, one of 40% does not."""
    from math import comb, sqrt

    from trajreg.record.modes.sample import MIN_WINDOW

    p = effective_rate(0.05, DEFAULT_MIN_STEPS, 300)
    assert p == pytest.approx(2 / 3)

    def at_least(n: int, k: int) -> float:
        return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    assert (150 * p - MIN_WINDOW) / sqrt(150 * p * (1 - p)) == pytest.approx(4.8, abs=0.05)
    assert at_least(123, MIN_WINDOW) >= 0.975 > at_least(120, MIN_WINDOW)


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


def test_default_dim_keeps_x_itself_where_a_sketch_would_not_save_disk():
    from trajreg.record.modes.sketch import DEFAULT_DIM, default_dim

    assert DEFAULT_DIM == 16384
    assert default_dim(1546) == 1546 and default_dim(2 * DEFAULT_DIM) == 2 * DEFAULT_DIM
    assert default_dim(2 * DEFAULT_DIM + 1) == DEFAULT_DIM == default_dim(10**7)
