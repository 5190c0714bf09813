"""The ``trajreg`` command: real subprocesses, exit codes, nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import tiny
from trajreg.atomic import read_json

pytestmark = pytest.mark.slow


def _cli(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "trajreg.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, **kw)


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("change, key", [
    ({"optim": {"lr": -1.0}}, "optim.lr"),
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"model": {"name": "resnet9000"}}, "model.name"),
    ({"data": {"name": "imagenet"}}, "data.name"),
    ({"train": {"epochs": "many"}}, "train.epochs"),
    ({"record": {"mode": "tape", "extra": 1}}, "record.extra"),
    ({"optim": {"lr": 1e39}}, "optim.lr"),  # issue 20: above float32's largest value
    ({"optim": {"lr": 1e-320}}, "optim.lr"),  # issue 20: 0 in float32
    ({"train": {"epochs": 10**9}}, "train.epochs"),  # issue 20: 2e9 steps' records
])
def test_bad_config_exit_2_names_key_writes_nothing(change, key, tmp_path):
    config = _write(tmp_path / "bad.yaml", tiny(**change))
    proc = _cli("run", config, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trajreg: error: {key}:"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_run_then_analyze_and_bad_paths(tmp_path):
    config = _write(tmp_path / "ok.yaml", tiny())
    proc = _cli("run", config, "--out", tmp_path / "r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "gamma_hat(eps=0.05)" in proc.stdout and "run directory:" in proc.stdout
    assert "\r" not in proc.stderr  # no progress bar when not a terminal
    proc = _cli("analyze", tmp_path / "r", "--eps", "0,0.2", "--window", "0:10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_json(tmp_path / "r" / "summary.json")["window"] == [0, 10]
    # existing output, missing run, bad options: exit 2 with one message
    for args in (("run", config, "--out", tmp_path / "r"), ("analyze", tmp_path / "nope"),
                 ("analyze", tmp_path / "r", "--window", "9:3"),
                 ("analyze", tmp_path / "r", "--eps", "2"),
                 ("analyze", tmp_path / "r", "--window", "0:9999")):
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip(), args


def test_killed_run_never_looks_finished(tmp_path):
    config = _write(tmp_path / "long.yaml", tiny(train={"epochs": 400}))
    proc = subprocess.Popen([sys.executable, "-m", "trajreg.cli", "run", str(config), "--out",
                             str(tmp_path / "r")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".r.partial-*/trajectory/x-0000.npy")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "r").exists()
    assert len(list(tmp_path.glob(".r.partial-*"))) == 1
    assert _cli("analyze", tmp_path / "r", cwd=tmp_path).returncode == 2


def _study_file(path, **change):
    base = tiny(train={"epochs": 1})
    base.pop("seed")
    raw = {"base": base, "grid": {"model.norm": ["none", "batch"]}, "seeds": [0], **change}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("change, message", [
    ({"grid": {"model.norm": ["none", "bogus"]}}, "model.norm: unknown value 'bogus'"),
    ({"seeds": "zero"}, "seeds: must be a non-empty list"),
    ({"gird": {}}, "gird: unknown study key"),
])
def test_bad_study_exit_2_writes_nothing(change, message, tmp_path):
    study = _study_file(tmp_path / "bad.yaml", **change)
    proc = _cli("study", study, "--out", tmp_path / "s", "--executor", "serial", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, message", [
    (["--executor", "slurm"], "unknown executor 'slurm'"),
    (["--jobs", "0"], "--jobs: must be >= 1"),
    (["--preset", "quick"], "only the built-in studies (paper, transformer) have presets"),
])
def test_bad_study_options_exit_2(args, message, tmp_path):
    study = _study_file(tmp_path / "s.yaml")
    proc = _cli("study", study, "--out", tmp_path / "s", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr


def test_study_then_report(tmp_path):
    study = _study_file(tmp_path / "s.yaml")
    proc = _cli("study", study, "--out", tmp_path / "s", "--executor", "serial", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 of 2 runs finished, 0 failed (2 run now)" in proc.stdout
    report = tmp_path / "s" / "report.html"
    report.unlink()
    proc = _cli("report", tmp_path / "s", cwd=tmp_path)
    assert proc.returncode == 0 and report.is_file()
    assert _cli("report", tmp_path, cwd=tmp_path).returncode == 2  # not a study directory


def test_run_with_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    config = _write(tmp_path / "c.yaml", tiny(train={"epochs": 1}))
    proc = _cli("run", config, "--out", tmp_path / "r", "--tensorboard", "--no-figures",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((tmp_path / "r").glob("*.png"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_clear_error_before_anything_is_written(tmp_path):
    config = _write(tmp_path / "c.yaml", tiny(train={"device": "cuda"}))
    proc = _cli("run", config, "--out", tmp_path / "r", cwd=tmp_path)
    assert proc.returncode == 2 and "train.device: cuda requested" in proc.stderr
    assert not (tmp_path / "r").exists()
    study = _study_file(tmp_path / "s.yaml")
    raw = yaml.safe_load(study.read_text())
    raw["base"]["train"]["device"] = "cuda"
    study.write_text(yaml.safe_dump(raw))
    proc = _cli("study", study, "--out", tmp_path / "s", cwd=tmp_path)
    assert proc.returncode == 2 and "train.device: cuda requested" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_study_data_root_points_local_data_sets(tmp_path):
    from trajreg.study import load_study, preset_path
    from trajreg.study.spec import with_data_root
    from trajreg.train.config import read_yaml

    raw = with_data_root(read_yaml(preset_path("standard")), str(tmp_path))
    roots = {spec.config["data"]["name"]: spec.config["data"]["root"]
             for spec in load_study(raw).runs}
    assert roots["cifar10"] == str(tmp_path) and roots["mnist1d"] is None
