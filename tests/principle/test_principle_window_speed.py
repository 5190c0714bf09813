"""converging_window, steps_to_threshold and auc_log_loss on hand-built curves."""

import math

import numpy as np
import pytest

from trajreg.principle import auc_log_loss, converging_window, steps_to_threshold

ENDS10 = [100 * k for k in range(1, 11)]  # 10 epochs of 100 steps, T = 1000


def test_fast_convergence():
    # F* = 0, F_0 = 10, threshold 0.5: F_2 = 0.4 is the first to qualify
    F = [10.0, 3.0, 0.4, 0.1, 0.05, 0.02, 0.01, 0.0, 0.0, 0.0, 0.0]
    assert converging_window(F, ENDS10) == (0, 200)
    # the first epoch already converged: at least one epoch
    F1 = [10.0, 0.1] + [0.0] * 9
    assert converging_window(F1, ENDS10) == (0, 100)
    # tau changes the threshold
    assert converging_window(F, ENDS10, tau=0.5) == (0, 100)
    assert converging_window(F, ENDS10, tau=0.0) == (0, 700)


def test_slow_convergence_is_capped_at_90_percent():
    F = list(np.linspace(10.0, 1.0, 11))
    assert converging_window(F, ENDS10) == (0, 900)
    assert converging_window(F, ENDS10, max_fraction=0.5) == (0, 500)
    # capped even when the qualifying epoch is the last one
    F_late = [10.0] * 10 + [0.0]
    assert converging_window(F_late, ENDS10) == (0, 900)


def test_explicit_f_star():
    F = [10.0, 6.0, 5.3, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 4.0]
    # F* = 5: threshold 0.25, F_3 = 5.0 qualifies
    assert converging_window(F, ENDS10, f_star=5.0) == (0, 300)
    # default F* = F_E = 4: threshold 0.3, nothing before epoch 10 qualifies -> cap
    assert converging_window(F, ENDS10) == (0, 900)


def test_no_progress_or_f0_below_f_star():
    assert converging_window([1.0, 2.0, 3.0], [10, 20]) == (0, 18)
    assert converging_window([1.0, 1.0, 1.0], [10, 20]) == (0, 18)
    assert converging_window([1.0, 0.5, 0.2], [10, 20], f_star=2.0) == (0, 18)
    assert converging_window([float("nan"), 0.5, 0.2], [10, 20]) == (0, 18)
    assert converging_window([1.0, 0.5, float("nan")], [10, 20]) == (0, 18)


def test_one_epoch_and_tiny_runs():
    assert converging_window([1.0, 0.0], [10]) == (0, 9)
    assert converging_window([1.0, 0.0], [1]) == (0, 1)  # at least one step
    assert converging_window([1.0, 0.0], [1], max_fraction=0.01) == (0, 1)
    assert converging_window([1.0, 0.0], [10], max_fraction=1.0) == (0, 10)


def test_non_finite_losses_never_qualify():
    F = [10.0, float("nan"), float("-inf"), 0.1, 0.0]
    assert converging_window(F, [10, 20, 30, 40]) == (0, 30)
    F = [10.0, float("nan"), float("inf"), float("nan"), 0.0]
    assert converging_window(F, [10, 20, 30, 40], f_star=0.0) == (0, 36)


def test_uneven_epochs():
    F = [4.0, 2.0, 0.1, 0.0]
    assert converging_window(F, [7, 19, 30]) == (0, 19)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epoch_ends": [10, 10]}, "epoch_ends"),
        ({"epoch_ends": [0, 10]}, "epoch_ends"),
        ({"epoch_ends": [10]}, "epoch_ends"),
        ({"epoch_ends": [10.5, 20]}, "epoch_ends"),
        ({"full_loss": [1.0]}, "full_loss"),
        ({"tau": -0.1}, "tau"),
        ({"max_fraction": 0.0}, "max_fraction"),
        ({"max_fraction": 1.5}, "max_fraction"),
        ({"f_star": float("nan")}, "f_star"),
    ],
)
def test_window_errors(kwargs, match):
    args = {"full_loss": [1.0, 0.5, 0.2], "epoch_ends": [10, 20]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        converging_window(**args)


def test_steps_to_threshold():
    F = [2.0, 1.0, 0.4, 0.6, 0.05]
    ends = [10, 25, 40, 55]
    assert steps_to_threshold(F, ends, 0.5) == (25, 2)
    assert steps_to_threshold(F, ends, 0.05) == (55, 4)
    assert steps_to_threshold(F, ends, 2.0) == (0, 0)
    assert steps_to_threshold(F, ends, 0.01) == (None, None)
    assert steps_to_threshold([2.0, float("nan"), 0.1], [5, 10], 1.0) == (10, 2)
    assert steps_to_threshold([2.0, float("-inf"), 0.1], [5, 10], 1.0) == (10, 2)
    steps, epochs = steps_to_threshold(np.array(F), np.array(ends), 0.5)
    assert type(steps) is int and type(epochs) is int


def _auc_loop(F):
    logs = [math.log(max(f, 1e-12)) for f in F]
    area = sum((logs[k] + logs[k + 1]) / 2 for k in range(len(F) - 1))
    return area / (len(F) - 1)


def test_auc_log_loss():
    assert auc_log_loss([1.0, 1.0, 1.0]) == 0.0
    F = [2.0, 1.0, 0.4, 0.6, 0.05]
    assert auc_log_loss(F) == pytest.approx(_auc_loop(F), rel=1e-12)
    # a constant loss gives its log whatever the run length: comparable across lengths
    assert auc_log_loss([0.5] * 3) == pytest.approx(auc_log_loss([0.5] * 30))
    # faster convergence -> lower value
    assert auc_log_loss([1.0, 0.1, 0.01, 0.01]) < auc_log_loss([1.0, 0.5, 0.2, 0.01])
    # zero and negative losses are clipped at 1e-12
    assert auc_log_loss([1.0, 0.0, -1.0]) == pytest.approx(_auc_loop([1.0, 1e-12, 1e-12]))
    assert math.isnan(auc_log_loss([1.0, float("nan")]))
    assert math.isnan(auc_log_loss([1.0, float("inf")]))
    with pytest.raises(ValueError, match="full_loss"):
        auc_log_loss([1.0])
