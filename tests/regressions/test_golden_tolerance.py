"""Issue 20: on a CPU with AVX-512 and AMX, a fresh clone's ``make test`` failed
tests/run/test_golden.py, which compared float32 training against stored values as if
every CPU picked the same kernels (gamma_hat(0) 0.7708298 there, 0.7708310 stored). The
golden comparison now accepts float32 differences of the size measured between CPUs
(15-18 ulps) and still rejects what a change of the numbers moves (1e-3 relative and
more), a changed integer, and a renamed, dropped or retyped key."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tests.run.test_golden import GOLDEN, RTOL, _same

ULP = float(np.finfo(np.float32).eps)


def _summary() -> dict:
    return json.loads((GOLDEN / "store_summary.json").read_text())


def _scaled(value, factor):
    """Every float in ``value`` times ``factor`` (ints, bools, strings, None kept)."""
    if isinstance(value, dict):
        return {k: _scaled(v, factor) for k, v in value.items()}
    if isinstance(value, list):
        return [_scaled(v, factor) for v in value]
    return value * factor if isinstance(value, float) else value


def test_the_tolerance_is_float32_ulps_with_margin_over_the_measured_differences():
    assert RTOL == 1024 * ULP
    assert RTOL >= 50 * 18.4 * ULP  # the largest difference measured between selections
    assert RTOL <= 1e-3 / 8  # far below what a changed formula moves


@pytest.mark.parametrize("ulps", [1, 16, 100])
def test_every_value_moved_by_float32_ulps_is_accepted(ulps):
    want = _summary()
    _same(want, _scaled(want, 1 + ulps * ULP), "summary")
    _same(want, _scaled(want, 1 - ulps * ULP), "summary")
    sums = json.loads((GOLDEN / "store_metrics.json").read_text())["sums"]
    _same(sums, _scaled(sums, 1 + ulps * ULP), "metrics")


@pytest.mark.parametrize("rel", [1e-3, -1e-3, 2048 * ULP])
@pytest.mark.parametrize("key", ["gamma_hat", "kappa_hat"])
def test_one_value_moved_by_a_formula_is_rejected(key, rel):
    want = _summary()
    got = copy.deepcopy(want)
    got[key]["0.0"] *= 1 + rel
    with pytest.raises(AssertionError, match=rf"^summary\.{key}\.0\.0: "):
        _same(want, got, "summary")


def test_a_metrics_sum_moved_by_a_formula_is_rejected():
    sums = json.loads((GOLDEN / "store_metrics.json").read_text())["sums"]
    got = {**sums, "a": sums["a"] * (1 + 1e-3)}
    with pytest.raises(AssertionError, match=r"^metrics\.a: "):
        _same(sums, got, "metrics")


@pytest.mark.parametrize("change", ["window", "flag", "dropped", "renamed", "retyped"])
def test_integers_flags_and_keys_are_exact(change):
    want = _summary()
    got = copy.deepcopy(want)
    if change == "window":
        got["window"][1] -= 1
    elif change == "flag":
        got["bound"]["holds"] = not got["bound"]["holds"]
    elif change == "dropped":
        del got["gamma_bar"]
    elif change == "renamed":
        got["gamma_hat_eps"] = got.pop("gamma_hat")
    else:
        got["gamma_hat"]["0.0"] = str(got["gamma_hat"]["0.0"])
    with pytest.raises(AssertionError):
        _same(want, got, "summary")
