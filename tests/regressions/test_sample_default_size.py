"""Issue 19: sample mode's defaults gave no answer on ordinary runs. At the default rate
0.05, runs of 188-301 steps kept 9-13 steps (a two-sided interval for gamma_hat(0.05)
needs 72 in the window), and the warning told a session user to raise
record.sample_rate, a config key they do not have. Now a run of known length keeps at
least ``record.sample_min_steps`` (200) steps, and a run of unknown length is warned
about before training, in the words of the API in use."""

from __future__ import annotations

import pytest

from tests.conftest import tiny
from trajreg.record.modes.sample import SampleMode
from trajreg.run.runner import run
from trajreg.train.config import load_config


@pytest.mark.slow
def test_a_300_step_run_at_the_defaults_gets_a_two_sided_interval(tmp_path, one_thread):
    # a slowly converging MLP: the converging window is most of the 320 steps
    cfg = load_config(tiny(data={"batch_size": 16}, optim={"name": "sgd", "lr": 0.01},
                           train={"epochs": 10}, record={"mode": "sample"}))
    _, summary = run(cfg, tmp_path / "r", figures=False, progress=False)
    assert 300 <= summary.n_steps <= 330
    assert summary.n_sampled_window >= 72
    low, high = summary.gamma_hat_ci["0.05"]
    assert low is not None and high is not None
    assert low <= summary.gamma_hat["0.05"] <= high


def test_unknown_steps_warn_before_training_in_the_words_given():
    words = {"steps": "RegularitySession(steps=...)", "rate": "SampleMode(rate=...)",
             "min_steps": "SampleMode(min_steps=...)"}
    mode = SampleMode()
    with pytest.warns(UserWarning, match="number of steps is unknown") as caught:
        mode.plan(None, None, words=words)
    text = str(caught[0].message)
    assert all(word in text for word in words.values())
    assert "record.sample_rate" not in text and mode.rate == 0.05
