"""A session's run mirrored to W&B and MLflow (offline): into the script's active runs,
left open, or into runs of its own, named after the run directory and closed."""

from __future__ import annotations

import pandas as pd
import pytest

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

from tests.linear_loop import linear_problem, mse, train_with_session  # noqa: E402
from tests.tracker_files import finite, offline, wandb_runs  # noqa: E402
from trajreg.integrations import RegularitySession  # noqa: E402


def measured(out, **options):
    model, opt, batch = linear_problem(lr=0.05)
    session = RegularitySession(out, source="plain", figures=False, interpolation=False,
                                **options)
    train_with_session(session, model, opt, batch, 8)
    return session.finish(model, mse)


def test_session_logs_into_the_scripts_active_runs(monkeypatch, tmp_path):
    store = offline(monkeypatch, tmp_path)
    mine = wandb.init(project="mine", name="script")
    active = mlflow.start_run(run_name="script")
    try:
        mine.log({"mine": 1.0})
        mlflow.log_metric("mine", 1.0)
        measured(tmp_path / "run", trackers=("wandb", "mlflow"))
        # the script's runs stay open: it ends them
        assert wandb.run is mine and mlflow.active_run().info.run_id == active.info.run_id
    finally:
        mlflow.end_run()
        mine.finish()
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    (run,) = wandb_runs(tmp_path / "wandb")
    assert (run.name, run.project) == ("script", "mine")
    assert run.series("trajreg/step/D", "trajreg/step")[1] == finite(table, "D")[1].tolist()
    assert run.summary["mine"] == 1.0 and run.summary["trajreg/source"] == "plain"
    client = mlflow.MlflowClient(f"file:{store}")
    (logged,) = client.search_runs(["0"])
    assert logged.info.run_name == "script" and logged.data.metrics["mine"] == 1.0
    history = client.get_metric_history(logged.info.run_id, "trajreg/step/a")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == (
        finite(table, "a")[1].tolist())


def test_session_starts_and_ends_its_own_runs(monkeypatch, tmp_path):
    store = offline(monkeypatch, tmp_path)
    measured(tmp_path / "run", trackers=("wandb", "mlflow"), tensorboard=True)
    assert wandb.run is None and mlflow.active_run() is None
    (run,) = wandb_runs(tmp_path / "wandb")
    assert run.name == "run" and "trajreg/gamma_bar" in run.summary
    (logged,) = mlflow.MlflowClient(f"file:{store}").search_runs(["0"])
    assert logged.info.run_name == "run" and logged.info.status == "FINISHED"
    assert (tmp_path / "run" / "tensorboard").is_dir()
