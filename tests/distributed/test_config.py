"""Distributed runs without processes: the config, --nproc, failure messages
(the sharded trajectory's measurement: tests/record/test_shards.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny
from trajreg.distributed import launch
from trajreg.distributed.launch import describe_failure, with_nproc
from trajreg.errors import ConfigError
from trajreg.record.recorder import local_part
from trajreg.train.config import load_config


def _dist(**kw) -> dict:
    return tiny(train={"epochs": 1, "distributed": kw}, data={"batch_size": 64})


def test_distributed_section_is_optional_and_round_trips():
    plain = load_config(tiny())
    assert plain.train.distributed is None
    assert "distributed" not in plain.to_dict()["train"]  # run ids of plain runs unchanged
    cfg = load_config(_dist(strategy="fsdp", nproc=4))
    assert (cfg.train.distributed.strategy, cfg.train.distributed.nproc,
            cfg.train.distributed.backend) == ("fsdp", 4, "gloo")
    again = load_config(cfg.to_dict())
    assert again.train.distributed == cfg.train.distributed


@pytest.mark.parametrize("section, message", [
    ({"nproc": 3}, "data.batch_size: 64 is not divisible by train.distributed.nproc 3"),
    ({"strategy": "zero"}, "train.distributed.strategy: unknown value 'zero'"),
    ({"backend": "mpi"}, "train.distributed.backend: unknown value 'mpi'"),
    ({"nproc": 0}, "train.distributed.nproc: must be > 0"),
    ({"backend": "nccl"}, "train.distributed.backend: nccl needs train.device cuda"),
])
def test_bad_distributed_sections_are_one_line_errors(section, message):
    with pytest.raises(ConfigError) as info:
        load_config(_dist(**section))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_replay_refused_and_fsdp_modes():
    with pytest.raises(ConfigError, match="replay cannot measure a distributed run"):
        load_config(tiny(train={"distributed": {}}, record={"mode": "replay"}))
    for mode in ("store", "sample", "sketch", "off"):  # every mode but replay
        load_config(tiny(train={"distributed": {"strategy": "fsdp"}}, record={"mode": mode}))
    load_config(tiny(train={"distributed": {}}, record={"mode": "sample"}))  # ddp: any


def test_nproc_override():
    cfg = with_nproc(load_config(tiny()), 4)
    assert cfg.train.distributed.strategy == "ddp" and cfg.train.distributed.nproc == 4
    cfg = with_nproc(load_config(_dist(strategy="fsdp")), 1)
    assert (cfg.train.distributed.strategy, cfg.train.distributed.nproc) == ("fsdp", 1)
    with pytest.raises(ConfigError, match="not divisible"):
        with_nproc(load_config(tiny()), 5)


def test_run_dispatches_on_the_distributed_section(monkeypatch, tmp_path):
    """``trajreg.run`` (``launch.run``) trains a plain config in this process and launches
    a distributed one (after the disk check ``runner.run`` makes); ``runner.run``, a
    layer below ``trajreg.distributed``, refuses a distributed config."""
    from trajreg.run import runner

    calls = []
    monkeypatch.setattr(runner, "run", lambda cfg, out, **kw: calls.append(("here", kw)))
    monkeypatch.setattr(launch, "check_run_disk", lambda cfg, out: calls.append(("disk", {})))
    monkeypatch.setattr(launch, "run_distributed",
                        lambda cfg, out, **kw: calls.append(("ranks", kw)))
    launch.run(load_config(tiny()), tmp_path / "a", figures=False, on_epoch=print)
    launch.run(load_config(_dist()), tmp_path / "b", progress=False, tensorboard=True)
    assert calls == [("here", {"figures": False, "progress": None, "on_epoch": print,
                               "tensorboard": False, "trackers": ()}),
                     ("disk", {}),
                     ("ranks", {"figures": True, "progress": False, "tensorboard": True,
                                "trackers": ()})]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="train.distributed runs through trajreg.run"):
        runner.run(load_config(_dist()), tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_cli_nproc_argument():
    from trajreg.cli import parser

    assert parser().parse_args(["run", "c.yaml", "--nproc", "2"]).nproc == 2
    assert parser().parse_args(["run", "c.yaml"]).nproc is None
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "c.yaml", "--nproc", "0"])


def test_failure_message_names_the_rank(tmp_path):
    killed = {"1": {"exitcode": -9, "signal": "SIGKILL", "pid": 42, "timestamp": 5},
              "0": {"exitcode": 1, "signal": "", "pid": 41, "timestamp": 5}}
    (tmp_path / "rank-0.error").write_text("RuntimeError: Connection closed by peer\n")
    message = describe_failure(killed, tmp_path, 1)
    assert message.startswith("distributed run failed: rank 1 (pid 42) was killed by SIGKILL")
    assert "rank 0 failed too" in message and "\n" not in message
    (tmp_path / "rank-1.error").write_text("ConfigError: bad\n")
    failed = {"1": {"exitcode": 2, "signal": "", "pid": 42, "timestamp": 3}}
    assert "rank 1 (pid 42) exited with status 2: ConfigError: bad" in describe_failure(
        failed, tmp_path, 1)
    assert "status 7" in describe_failure({}, tmp_path, 7)
    # a rank that raised, then the agent stopped the other with SIGTERM: the one that raised
    (tmp_path / "rank-1.error").unlink()
    (tmp_path / "rank-0.error").write_text("ConfigError: analysis.reference: bad\n")
    stopped = {"1": {"exitcode": -15, "signal": "SIGTERM", "pid": 42, "timestamp": 5},
               "0": {"exitcode": 2, "signal": "", "pid": 41, "timestamp": 5}}
    assert describe_failure(stopped, tmp_path, 1).startswith(
        "distributed run failed: rank 0 (pid 41) exited with status 2: ConfigError")
    # two ranks raised: the first error line written names the rank
    import os
    (tmp_path / "rank-1.error").write_text("ValueError: first\n")
    os.utime(tmp_path / "rank-1.error", ns=(1, 1))
    both = {"0": {"exitcode": 1, "pid": 41, "timestamp": 5},
            "1": {"exitcode": 1, "pid": 42, "timestamp": 5}}
    assert "rank 1 (pid 42) exited with status 1: ValueError: first" in describe_failure(
        both, tmp_path, 1)


def test_local_part_of_plain_and_sharded_parameters():
    p = torch.zeros(3, 4)
    assert local_part(p) is p

    class Sharded:  # what the recorder asks of a DTensor
        def to_local(self):
            return p[:1]

    assert local_part(Sharded()).shape == (1, 4)
