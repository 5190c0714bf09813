"""The Hugging Face Trainer callback on a real (small, config-built) model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

transformers = pytest.importorskip("transformers")

from tests.integrations.hf_fixtures import Tokens, tiny_gpt2  # noqa: E402
from trajreg.integrations.huggingface import RegularityCallback  # noqa: E402
from trajreg.run import analyze  # noqa: E402
from trajreg.run.summary import read_summary  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("accumulate", [1, 2])
def test_trainer_callback_exact_quantities(tmp_path, accumulate):
    out = tmp_path / "run"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16,
        gradient_accumulation_steps=accumulate, num_train_epochs=2, learning_rate=5e-3,
        weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear", logging_strategy="no",
        save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True)
    cb = RegularityCallback(out)
    model = tiny_gpt2()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   callbacks=[cb])
    trainer.train()
    table = pd.read_parquet(out / "metrics.parquet")
    summary = read_summary(out)
    steps_per_epoch = 96 // 16 // accumulate
    assert len(table) == 2 * steps_per_epoch == trainer.state.global_step
    assert summary.epoch_ends == [steps_per_epoch, 2 * steps_per_epoch]
    D = np.append(table["D"].to_numpy(), 0.0)
    eta, a, s = table["lr"].to_numpy(), table["a"].to_numpy(), table["s"].to_numpy()
    assert np.allclose(D[:-1] - D[1:], 2 * eta * a - eta**2 * s, rtol=1e-6,
                       atol=1e-9 * D.max())
    assert (np.diff(eta) < 0).all()  # the linear schedule, step by step
    # dropout masks and inputs were rebuilt exactly for every step
    check = summary.loss_check
    assert check["steps"] == len(table) and check["equal"] == len(table), check
    assert np.isfinite(table["b"]).all() and summary.source == "huggingface"
    again = analyze(out, eps=[0.0, 0.2])
    assert set(again.gamma_hat) == {"0.0", "0.2"}


def test_trainer_callback_in_sketch_mode(tmp_path):
    """``mode`` reaches the session: every step sketched (d > k, hashed), checked against
    its exact sample, each step's loss at x* on its rebuilt micro-batches."""
    from trajreg.record.modes.sketch import SketchMode

    out = tmp_path / "run"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16, num_train_epochs=2,
        learning_rate=5e-3, logging_strategy="no", save_strategy="no", report_to=[],
        use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    mode = SketchMode(dim=1024, check_rate=0.3, seed=2)
    cb = RegularityCallback(out, mode=mode, figures=False)
    model = tiny_gpt2()
    assert sum(p.numel() for p in model.parameters()) > 1024
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   callbacks=[cb])
    trainer.train()
    table = pd.read_parquet(out / "metrics.parquet")
    summary = read_summary(out)
    T = trainer.state.global_step
    assert table["step"].tolist() == list(range(T)) and np.isfinite(table["b"]).all()
    assert summary.sketch_error["n"] == len(mode.sampler.kept(T))
    check = summary.loss_check
    assert check["steps"] == check["equal"] > 0
    assert summary.mli is not None and summary.source == "huggingface"


def test_trackers_log_into_the_runs_report_to_opened(monkeypatch, tmp_path):
    """``report_to=["wandb", "mlflow"]``: the mirrors go into the runs the Trainer's own
    callbacks opened (offline), the MLflow one although the Trainer ends it first."""
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    from tests.tracker_files import finite, offline, wandb_runs

    store = offline(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    out = tmp_path / "run"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16, num_train_epochs=1,
        learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=["wandb", "mlflow"],
        run_name="fit", use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    cb = RegularityCallback(out, trackers=("wandb", "mlflow"), figures=False)
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=Tokens(),
                                   callbacks=[cb])
    trainer.train()
    wandb.finish()  # the Trainer leaves its W&B run open
    table = pd.read_parquet(out / "metrics.parquet")
    (run,) = wandb_runs(tmp_path)
    assert (run.name, run.project) == ("fit", "mine")
    assert any("train/loss" in row for row in run.history)  # the Trainer's own
    assert run.series("trajreg/step/b", "trajreg/step")[1] == finite(table, "b")[1].tolist()
    client = mlflow.MlflowClient(f"file:{store}")
    (logged,) = client.search_runs(["0"])
    assert logged.info.run_name == "fit" and "loss" in logged.data.metrics
    history = client.get_metric_history(logged.info.run_id, "trajreg/step/D")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == (
        finite(table, "D")[1].tolist())
    assert mlflow.active_run() is None
