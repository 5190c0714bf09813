"""Fuzzing ``trajreg run``'s config handling with hypothesis.

Random mutations of a valid tiny config (wrong types, unknown keys, out-of-range
values, random strings, None, missing or replaced sections) and random bytes as a
config file. Each must either fail with exit status 2, exactly one line on stderr and
nothing written beside --out, or be a valid config and give a finished run that
verifies. Anything else (an internal error, a traceback, a second line, a leftover
directory) is a bug. ``cli.main`` runs in process: most examples fail in validation,
in milliseconds; the valid ones train a 2-layer MLP of width 8 for an epoch or two.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import signal
import tempfile
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from trajreg import cli  # noqa: E402
from trajreg.run import rundir  # noqa: E402

BASE = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64, "subset": 256},
    "model": {"name": "mlp", "depth": 2, "width": 8, "activation": "relu", "norm": "none"},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 1, "threads": 1},
    "record": {"mode": "store"},
    "analysis": {"eps": [0.0, 0.05], "tau": 0.05},
}
# keys whose valid values stay cheap whatever small value they get (not train.epochs
# beyond the few the values below allow, nor train.distributed, which spawns ranks)
KEYS = [("seed",), ("data", "name"), ("data", "batch_size"), ("data", "subset"),
        ("data", "normalize"), ("data", "test_fraction"), ("data", "resize"),
        ("model", "name"), ("model", "depth"), ("model", "width"), ("model", "activation"),
        ("model", "norm"), ("model", "dropout"), ("model", "init"), ("optim", "name"),
        ("optim", "lr"), ("optim", "momentum"), ("optim", "weight_decay"), ("optim", "betas"),
        ("optim", "schedule"), ("train", "epochs"), ("train", "device"),
        ("train", "threads"), ("record", "mode"), ("record", "sample_rate"),
        ("analysis", "eps"), ("analysis", "tau"), ("analysis", "reference"),
        ("analysis", "delta"), ("analysis", "max_fraction"), ("analysis", "loss_threshold"),
        ("data", "bogus"), ("model", "colour"), ("train", "epoch"), ("extra",)]
SECTIONS = ["data", "model", "optim", "train", "record", "analysis"]

values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3),
    st.sampled_from([0.5, -1e30, 1e30, math.nan, math.inf, -math.inf, "", "3", "relu",
                     "batch", "final", [], {}, [0.9], [0.1, 2.0]]),
    st.text(max_size=12), st.lists(st.integers(-1, 3), max_size=3))


@st.composite
def mutated(draw) -> object:
    cfg = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "drop section", "replace section",
                                     "replace all"]))
        if kind == "set":
            *parents, key = draw(st.sampled_from(KEYS))
            target = cfg
            for p in parents:
                if not isinstance(target.get(p), dict):
                    target[p] = {}
                target = target[p]
            target[key] = draw(values)
        elif kind == "drop section":
            cfg.pop(draw(st.sampled_from(SECTIONS)), None)
        elif kind == "replace section":
            cfg[draw(st.sampled_from(SECTIONS))] = draw(values)
        else:
            return draw(values)
    return cfg


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout("a fuzz example ran for more than 120 s")


def _check(config_text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "c.yaml"
        config.write_bytes(config_text)
        out = tmp / "r"
        err, sink = io.StringIO(), io.StringIO()
        before = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(120)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
                status = cli.main(["run", str(config), "--out", str(out), "-q",
                                   "--no-figures"])
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, before)
        message = err.getvalue()
        if status == 0:
            rundir.verify_run_dir(out)
            assert sorted(p.name for p in tmp.iterdir()) == ["c.yaml", "r"]
            return
        assert status == 2, (status, message, config_text[:300])
        lines = message.splitlines()
        assert len(lines) == 1 and lines[0].startswith("trajreg: error: "), (message,
                                                                             config_text[:300])
        assert sorted(p.name for p in tmp.iterdir()) == ["c.yaml"], message


FUZZ = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.slow
@FUZZ
@given(mutated())
def test_mutated_configs_fail_in_one_line_or_run(one_thread_module, cfg):
    _check(yaml.safe_dump(cfg, allow_unicode=True).encode())


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_a_config_fail_in_one_line(cfg_bytes):
    _check(cfg_bytes)


@pytest.fixture(scope="module")
def one_thread_module():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
