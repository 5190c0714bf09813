"""W&B and MLflow mirrors of a real run (``trajreg run --wandb --mlflow``), offline: what
they hold read back from W&B's offline run file and MLflow's file store, the calls
counted to show the scalars go in batches, and the refusals before training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

from tests.conftest import tiny  # noqa: E402
from tests.tracker_files import finite, offline, wandb_runs  # noqa: E402
from trajreg import cli  # noqa: E402
from trajreg.errors import UserError  # noqa: E402
from trajreg.run import trackers  # noqa: E402
from trajreg.run.summary import read_summary  # noqa: E402
from trajreg.run.tensorboard import STEP_TAGS  # noqa: E402


def counting(monkeypatch, owner, name: str) -> list:
    """Count the calls of ``owner.name`` (which still runs)."""
    calls: list = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """One run through the command with both trackers (and TensorBoard), in-process so
    that the trackers' calls are counted."""
    tmp = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as mp:
        store = offline(mp, tmp)
        logs = counting(mp, wandb.sdk.wandb_run.Run, "log")
        batches = counting(mp, mlflow.MlflowClient, "log_batch")
        config = tmp / "c.yaml"
        config.write_text(yaml.safe_dump(tiny(train={"epochs": 2})))
        status = cli.main(["-q", "run", str(config), "--out", str(tmp / "r1"), "--wandb",
                           "--mlflow", "--tensorboard"])
        assert status == 0
    return tmp, store, logs, batches


def test_wandb_holds_the_run(mirrored):
    tmp, _, logs, _ = mirrored
    out = tmp / "r1"
    table, summary = pd.read_parquet(out / "metrics.parquet"), read_summary(out).to_dict()
    (run,) = wandb_runs(tmp / "wandb")
    assert (run.name, run.project) == ("r1", "trajreg")
    # every step's quantities, against trajreg/step, equal metrics.parquet's
    for col in STEP_TAGS:
        steps, values = run.series(f"trajreg/step/{col}", "trajreg/step")
        want_steps, want = finite(table, col)
        assert steps == want_steps and np.array_equal(values, want), col
    steps, values = run.series("trajreg/epoch/gamma_bar", "trajreg/epoch")
    assert steps == [1, 2] and values == summary["gamma_bar_per_epoch"]
    assert run.series("trajreg/epoch/full_loss", "trajreg/epoch") == (
        [0, 1, 2], summary["full_loss"])
    # batched: one log call a step and one an epoch, not one a value
    n_values = sum(np.isfinite(table[c]).sum() for c in STEP_TAGS)
    assert len(logs) == len(table) + 3 < n_values / 5
    # the summary's scalars, flattened; the config; the files as one artifact
    assert run.summary["trajreg/gamma_bar"] == summary["gamma_bar"]
    assert run.summary["trajreg/gamma_hat/0.05"] == summary["gamma_hat"]["0.05"]
    assert run.summary["trajreg/evaluation/test_accuracy"] == (
        summary["evaluation"]["test_accuracy"])
    assert run.summary["trajreg/record_mode"] == "store"
    assert run.config["trajreg"]["optim"]["lr"] == 0.05
    ((name, kind, files),) = run.artifacts
    assert (name, kind) == ("r1", "trajreg-run")
    assert {"summary.json", "config.yaml", "loss.png", "gamma_per_epoch.png"} <= set(files)
    # TensorBoard alongside, into the run directory; W&B's files stay outside it
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(out.glob("wandb*")) and not list(out.glob("mlruns"))


def test_mlflow_holds_the_run(mirrored):
    tmp, store, _, batches = mirrored
    out = tmp / "r1"
    table, summary = pd.read_parquet(out / "metrics.parquet"), read_summary(out).to_dict()
    client = mlflow.MlflowClient(f"file:{store}")
    (run,) = client.search_runs(["0"])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    for col in STEP_TAGS:
        history = client.get_metric_history(run.info.run_id, f"trajreg/step/{col}")
        got = sorted((m.step, m.value) for m in history)
        want_steps, want = finite(table, col)
        assert [s for s, _ in got] == want_steps, col
        assert np.array_equal([v for _, v in got], want), col
    history = client.get_metric_history(run.info.run_id, "trajreg/epoch/gamma_hat_eps0.05")
    assert sorted((m.step, m.value) for m in history) == list(
        enumerate(summary["gamma_hat_per_epoch"]["0.05"], start=1))
    metrics, params = run.data.metrics, run.data.params
    assert metrics["trajreg/gamma_bar"] == summary["gamma_bar"]
    assert metrics["trajreg/gamma_hat/0.0"] == summary["gamma_hat"]["0.0"]
    assert params["trajreg/record_mode"] == "store" and params["trajreg/diverged"] == "False"
    assert params["trajreg/config/optim/name"] == "sgd"
    assert params["trajreg/config/train/epochs"] == "2"
    # batched: every metric in one log_batch call (under MLflow's 1000), params in one
    n_metrics = sum(len(client.get_metric_history(run.info.run_id, k)) for k in metrics)
    assert n_metrics > 150 and len(batches) == 2
    files = {f.path for f in client.list_artifacts(run.info.run_id, "trajreg")}
    assert {"trajreg/summary.json", "trajreg/config.yaml", "trajreg/loss.png"} <= files


def test_mlflow_batches_stay_under_its_limit(mirrored, monkeypatch, tmp_path):
    """A run with more values than one call may hold is logged in chunks, every value
    kept (the limit lowered to 50 so that a tiny run needs several)."""
    tmp, *_ = mirrored
    store = offline(monkeypatch, tmp_path)
    monkeypatch.setattr(trackers, "MLFLOW_METRICS_PER_BATCH", 50)
    monkeypatch.setattr(trackers, "MLFLOW_PARAMS_PER_BATCH", 7)
    batches = counting(monkeypatch, mlflow.MlflowClient, "log_batch")
    trackers.mirror(tmp / "r1", ["mlflow"])
    client = mlflow.MlflowClient(f"file:{store}")
    (run,) = client.search_runs(["0"])
    n_metrics = sum(len(client.get_metric_history(run.info.run_id, k))
                    for k in run.data.metrics)
    n_params = len(run.data.params)
    sizes = [len(b.get("metrics") or b.get("params")) for b in batches]
    assert sizes == [50] * (n_metrics // 50) + [n_metrics % 50] * bool(n_metrics % 50) + [
        7] * (n_params // 7) + [n_params % 7] * bool(n_params % 7)
    table = pd.read_parquet(tmp / "r1" / "metrics.parquet")
    history = client.get_metric_history(run.info.run_id, "trajreg/step/D")
    assert len(history) == len(table)


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_missing_package_refused_before_training(monkeypatch, tmp_path, capsys, package):
    monkeypatch.setitem(__import__("sys").modules, package, None)  # import fails
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny()))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), f"--{package}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"trajreg: error: {package}: the {package} package is not installed; "
                   f"pip install 'trajreg[{package}]'"]
    assert not (tmp_path / "r").exists()


def test_unusable_mlflow_store_refused_before_training(monkeypatch, tmp_path, capsys):
    offline(monkeypatch, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchstore://here")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny()))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "--mlflow"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("trajreg: error: mlflow: cannot use the tracking store "
                          "nosuchstore://here: "), err
    assert not (tmp_path / "r").exists()


def test_tracker_names():
    assert trackers.tracker_names(["mlflow", "wandb", "mlflow"]) == ("wandb", "mlflow")
    assert trackers.tracker_names("wandb", tensorboard=True) == ("tensorboard", "wandb")
    with pytest.raises(UserError, match=r"trackers: unknown 'neptune' \(known: "
                                        r"tensorboard, wandb, mlflow\)"):
        trackers.tracker_names(["neptune"])


def test_flatten_keeps_scalars_by_path():
    flat = trackers._flatten({"a": {"b": 1, "c": [1, 2], "d": None, "e": math.inf},
                              "f": "x", "g": True, "h": math.nan})
    assert flat == {"a/b": 1, "f": "x", "g": True}


def test_a_failing_tracker_keeps_the_run_and_says_so(mirrored, monkeypatch, tmp_path):
    """After the others have logged: one line naming the tracker; the run is untouched."""
    tmp, *_ = mirrored
    store = offline(monkeypatch, tmp_path)
    client = mlflow.MlflowClient(f"file:{store}")
    nowhere = trackers.TrackerRuns(mlflow=(client, "0" * 32))  # no such run
    with pytest.raises(UserError, match=r"r1 is complete, but logging it failed: mlflow: "):
        trackers.mirror(tmp / "r1", ["wandb", "mlflow"], nowhere)
    (run,) = [r for r in wandb_runs(tmp_path / "wandb")]
    assert run.name == "r1" and run.artifacts
    assert read_summary(tmp / "r1").analysed
