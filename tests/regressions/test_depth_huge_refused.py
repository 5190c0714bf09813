"""Issue 10: ``model.depth: 100000`` was accepted and then spent ages building an MLP of
100000 layers. The depth is capped (models.MAX_DEPTH) and refused at once."""

from __future__ import annotations

import time

import pytest

from trajreg.errors import ConfigError
from trajreg.train.config import load_config


def test_huge_depth_is_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^model\.depth: must be <= \d+, got 100000$"):
        load_config({"data": {"name": "digits"}, "model": {"name": "mlp", "depth": 100000},
                     "optim": {"name": "sgd"}})
    assert time.perf_counter() - start < 1.0
