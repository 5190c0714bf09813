"""Issue 10: ``data.resize: 20000`` tried a multi-terabyte allocation. The run is sized
before anything is allocated and refused with the figures."""

from __future__ import annotations

import time

import pytest

from trajreg.errors import ConfigError
from trajreg.train.config import DataConfig, load_config
from trajreg.train.data import load_data
from trajreg.train.size import check_run_size

RAW = {"data": {"name": "mnist5k", "resize": 20000}, "model": {"name": "mlp"},
       "optim": {"name": "sgd"}}


def test_run_with_huge_resize_is_refused_quickly():
    cfg = load_config(RAW)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^data\.resize: the run needs about [\d.]+ TB "
                                          r".*set train\.max_memory_gb to override$"):
        check_run_size(cfg)
    assert time.perf_counter() - start < 1.0


def test_load_data_refuses_before_allocating():
    with pytest.raises(ConfigError, match=r"^data\.resize: the data set needs about "
                                          r"[\d.]+ TB in memory \(1438\+359 examples of "
                                          r"1x20000x20000 float32\)"):
        load_data(DataConfig(name="digits", resize=20000))
