"""Running studies for real: resume after SIGKILL, failures, executors, Dask on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from tests.conftest import tiny
from trajreg.errors import UserError
from trajreg.run.summary import read_summary
from trajreg.study import load_study, run_study
from trajreg.study.execute import study_lock
from trajreg.study.layout import FAILED_SUFFIX, run_state, runs_dir

pytestmark = pytest.mark.slow


def small_study(epochs: int = 2, seeds=(0, 1), **extra) -> dict:
    base = tiny(train={"epochs": epochs})
    base.pop("seed")
    return {"name": "small", "base": base, "grid": {"model.norm": ["none", "batch"]},
            "seeds": list(seeds), **extra}


def finished(study_dir) -> dict[str, int]:
    """run_id -> mtime (ns) of its summary.json, for every finished run: not a run still
    in its hidden partial directory (pathlib's ``*`` matches a leading dot), which may
    hold its summary.json just before it is renamed into place."""
    return {p.parent.name: p.stat().st_mtime_ns
            for p in runs_dir(study_dir).glob("*/summary.json")
            if not p.parent.name.startswith(".")}


def test_serial_study_runs_everything_once_and_reports(tmp_path, one_thread):
    study = load_study(small_study())
    result = run_study(study, tmp_path / "s", executor="serial", progress=False)
    assert sorted(result.done) == sorted(r.run_id for r in study.runs)
    assert not result.failed and len(result.ran) == 4
    assert set(result.workers.values()) == {f"{socket.gethostname()}:{os.getpid()}"}
    runs = pd.read_csv(tmp_path / "s" / "runs.csv")
    assert sorted(runs["run_id"]) == sorted(r.run_id for r in study.runs)
    assert (runs["status"] == "done").all()
    tech = pd.read_csv(tmp_path / "s" / "techniques.csv")
    assert tech["n_pairs"].tolist() == [2]
    # again: nothing to do, nothing rewritten
    before = finished(tmp_path / "s")
    again = run_study(study, tmp_path / "s", executor="serial", progress=False)
    assert again.ran == [] and finished(tmp_path / "s") == before


def test_a_failing_run_is_recorded_and_the_study_goes_on(tmp_path, one_thread):
    raw = small_study(seeds=[0])
    raw["grid"]["model.name"] = ["mlp", "vgg"]  # vgg cannot take 8x8 digits: fails at build
    study = load_study(raw)
    result = run_study(study, tmp_path / "s", executor="serial", progress=False)
    assert len(result.done) == 2 and len(result.failed) == 2
    for rid, reason in result.failed.items():
        assert "vgg needs images of side >= 32" in reason
        assert (runs_dir(tmp_path / "s") / f"{rid}{FAILED_SUFFIX}").is_file()
        assert not (runs_dir(tmp_path / "s") / rid).exists()
    runs = pd.read_csv(tmp_path / "s" / "runs.csv")
    assert sorted(runs["status"]) == ["done", "done", "failed", "failed"]
    # failed runs are not retried unless asked
    again = run_study(study, tmp_path / "s", executor="serial", progress=False)
    assert again.ran == [] and len(again.failed) == 2
    retried = run_study(study, tmp_path / "s", executor="serial", progress=False,
                        retry_failed=True)
    assert sorted(retried.ran) == sorted(result.failed)


def test_diverged_runs_are_finished_runs(tmp_path, one_thread):
    raw = small_study(seeds=[0])
    raw["base"]["optim"] = {"name": "sgd", "lr": 1e6}
    raw["grid"] = {"model.norm": ["none"]}
    study = load_study(raw)
    result = run_study(study, tmp_path / "s", executor="serial", progress=False)
    assert len(result.done) == 1
    runs = pd.read_csv(tmp_path / "s" / "runs.csv")
    assert runs["status"].tolist() == ["diverged"] and runs["diverged"].tolist() == [True]


def test_one_study_process_per_directory(tmp_path):
    with study_lock(tmp_path), pytest.raises(UserError, match="another trajreg study"):
        with study_lock(tmp_path):
            pass


def _cli(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "trajreg.study.cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_resume_after_sigkill(tmp_path, executor):
    """Kill the study process (SIGKILL) while a run is half-written; start it again:
    only unfinished runs are redone, nothing is duplicated or reported half-written."""
    raw = small_study(epochs=6, seeds=[0, 1, 2])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = load_study(raw)
    out = tmp_path / "s"
    proc = _cli("study", path, "--out", out, "--executor", executor, "--jobs", "1", cwd=tmp_path)
    deadline = time.monotonic() + 240
    # wait until one run has finished and the next one is half-written
    while not (finished(out) and list(runs_dir(out).glob(".*.partial-*/trajectory"))):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # a worker would have had time to finish a run
    before = finished(out)
    assert 1 <= len(before) < len(study.runs)
    assert list(runs_dir(out).glob(".*.partial-*"))  # the killed run stayed partial
    assert not (out / "runs.csv").exists() and not (out / "report.html").exists()
    if executor == "process":  # the worker died with the study process
        time.sleep(2.0)
        assert finished(out) == before

    proc = _cli("study", path, "--out", out, "--executor", executor, "--jobs", "1", cwd=tmp_path)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    after = finished(out)
    assert sorted(after) == sorted(r.run_id for r in study.runs)
    for rid, mtime in before.items():  # finished runs were not redone
        assert after[rid] == mtime
    assert not list(runs_dir(out).glob(".*"))  # no partial left
    assert sorted(p.name for p in runs_dir(out).iterdir()) == sorted(after)
    n = len(study.runs)
    assert f"{n} of {n} runs finished, 0 failed ({n - len(before)} run now)" in text
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(study.runs) and (runs["status"] == "done").all()
    assert all(run_state(out, r.run_id) == "done" for r in study.runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real Dask scheduler and two single-threaded worker processes on 127.0.0.1."""
    pytest.importorskip("distributed")
    port = _free_port()
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                               "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = f"127.0.0.1:{port}"
    procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                   f"tcp://{address}", "--nworkers", "2", "--nthreads", "1",
                                   "--host", "127.0.0.1", "--no-dashboard"], cwd=tmp_path,
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    from distributed import Client

    deadline = time.monotonic() + 120
    while True:
        try:
            with Client(f"tcp://{address}", timeout="5s") as client:
                client.wait_for_workers(2, timeout=60)
                pids = set(client.run(os.getpid).values())
            break
        except (OSError, TimeoutError):
            assert time.monotonic() < deadline, "the Dask cluster did not start"
            time.sleep(0.5)
    yield address, pids
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_dask_executor_on_loopback(tmp_path, dask_cluster, monkeypatch):
    address, worker_pids = dask_cluster
    study = load_study(small_study())
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    monkeypatch.chdir(client_dir)  # a relative study directory, workers elsewhere
    result = run_study(study, "../s", executor=f"dask://{address}", progress=False)
    assert sorted(result.done) == sorted(r.run_id for r in study.runs) and not result.failed
    ran_in = {int(w.rsplit(":", 1)[1]) for w in result.workers.values()}
    assert ran_in <= worker_pids and os.getpid() not in ran_in
    runs = pd.read_csv(tmp_path / "s" / "runs.csv")
    assert (runs["status"] == "done").all()
    assert (tmp_path / "s" / "report.html").is_file()


def test_unreachable_dask_scheduler_is_a_user_error(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from trajreg.study.executors import DaskExecutor

    monkeypatch.setattr(DaskExecutor, "connect_timeout", "3s")  # the real wait, shorter
    study = load_study(small_study(seeds=[0]))
    with pytest.raises(UserError, match="cannot reach the Dask scheduler"):
        run_study(study, tmp_path / "s", executor=f"dask://127.0.0.1:{_free_port()}",
                  progress=False)


def test_the_same_run_id_gives_the_same_numbers_whatever_the_jobs(tmp_path):
    """train.threads is part of every run's config (1 unless the study sets it), so a
    run's id and numbers do not depend on --jobs: serially and on 2 worker processes the
    same ids give bit-identical summaries and per-step metrics."""
    study = load_study(small_study(epochs=2, seeds=[0]))
    assert all(spec.config["train"]["threads"] == 1 for spec in study.runs)
    a = run_study(study, tmp_path / "a", executor="serial", progress=False, report=False)
    b = run_study(study, tmp_path / "b", executor="process", jobs=2, progress=False,
                  report=False)
    assert sorted(a.done) == sorted(b.done) == sorted(r.run_id for r in study.runs)
    for spec in study.runs:
        sa = read_summary(runs_dir(tmp_path / "a") / spec.run_id)
        sb = read_summary(runs_dir(tmp_path / "b") / spec.run_id)
        assert sa.gamma_hat == sb.gamma_hat and sa.full_loss == sb.full_loss
        assert sa.auc_log_loss == sb.auc_log_loss
        ma = pd.read_parquet(runs_dir(tmp_path / "a") / spec.run_id / "metrics.parquet")
        mb = pd.read_parquet(runs_dir(tmp_path / "b") / spec.run_id / "metrics.parquet")
        pd.testing.assert_frame_equal(ma, mb, check_exact=True)
