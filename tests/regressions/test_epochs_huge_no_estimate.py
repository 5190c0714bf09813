"""Issue 20: ``train.epochs: 1000000000`` crashed store and sketch runs with ``OSError:
[Errno 22]`` (a file preallocated for every step), and off and replay runs started 2.2e10
steps without a word. A run's length is sized before anything is loaded: its per-step
records against the memory cap and what its record mode writes against the free space
of the output's file system, refused with the steps, the bytes and a lower bound on the
time; a run that cannot take less than a day is warned about."""

from __future__ import annotations

import time
from collections import namedtuple

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli
from trajreg.errors import ConfigError
from trajreg.train import size
from trajreg.train.config import load_config


@pytest.mark.parametrize("mode", ["store", "replay", "off", "sample", "sketch"])
def test_a_billion_epochs_are_refused_with_an_estimate(tmp_path, capsys, mode):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"epochs": 10**9}, record={"mode": mode},
                                          data={"subset": None})))
    start = time.perf_counter()
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    # 1437 training examples // 64 = 22 steps an epoch
    assert "2.2e+10 steps, at least 13 days at 50 us a step" in err, err
    assert err.startswith("trajreg: error: train.epochs: ")
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


def test_the_record_mode_disk_is_checked_against_free_space(tmp_path, monkeypatch):
    cfg = load_config(tiny(train={"epochs": 1000}))
    need = size.estimate_run_steps(cfg).disk_bytes
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(size.shutil, "disk_usage", lambda _: usage(need, 0, need - 1))
    with pytest.raises(ConfigError, match=r"^train\.epochs: the run writes about [\d.]+ MB "
                                          r"\(record mode store, 8e\+03 steps, at least "
                                          r"0\.4 s at 50 us a step\), above the "):
        size.check_run_disk(cfg, tmp_path / "a" / "b")
    monkeypatch.setattr(size.shutil, "disk_usage", lambda _: usage(need, 0, need))
    assert size.check_run_disk(cfg, tmp_path / "r").steps == 8000


def test_a_run_longer_than_a_day_is_warned_about():
    cfg = load_config(tiny(train={"epochs": 10**9, "max_memory_gb": 1e6}))
    with pytest.warns(UserWarning, match=r"^train\.epochs: 1000000000 epochs are 8e\+09 "
                                         r"steps, at least 4\.6 days at 50 us a step$"):
        size.check_run_size(cfg)
