"""The Lightning callback on a real fit: run directory, exact identity, exact losses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from trajreg.integrations.lightning import RegularityCallback  # noqa: E402
from trajreg.run import analyze  # noqa: E402
from trajreg.run.summary import read_summary  # noqa: E402
from trajreg.train.config import DataConfig  # noqa: E402
from trajreg.train.data import load_data  # noqa: E402

pytestmark = pytest.mark.slow


class Net(pl.LightningModule):
    def __init__(self, optimizer: str = "sgd"):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
            torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 10))
        self.optimizer = optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.optimizer == "adamw":
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader():
    data = load_data(DataConfig(name="digits", subset=320))
    ds = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    return torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)


def fit(out, accumulate=1, optimizer="sgd", **callback):
    torch.manual_seed(0)
    model = Net(optimizer)
    cb = RegularityCallback(out, **callback)
    trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=accumulate,
                         gradient_clip_val=0.5, callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, loader())
    return model, cb


@pytest.mark.parametrize("accumulate, optimizer", [(1, "sgd"), (2, "adamw")])
def test_callback_writes_a_run_directory_with_exact_quantities(tmp_path, accumulate,
                                                               optimizer):
    out = tmp_path / "run"
    model, cb = fit(out, accumulate, optimizer)
    for name in ("config.yaml", "metrics.parquet", "summary.json", "loss.png",
                 "final_state.pt", "trajectory/trajectory.json"):
        assert (out / name).exists(), name
    table = pd.read_parquet(out / "metrics.parquet")
    summary = read_summary(out)
    steps_per_epoch = -(-10 // accumulate)  # 320 / 32 = 10 batches an epoch
    assert len(table) == 2 * steps_per_epoch == summary.n_steps
    assert summary.epoch_ends == [steps_per_epoch, 2 * steps_per_epoch]
    # only real optimizer steps count; lr follows the per-step scheduler
    assert table["lr"].iloc[0] == (0.05 if optimizer == "sgd" else 1e-2)
    assert table["lr"].iloc[-1] < table["lr"].iloc[0]
    # the exact identity D_t - D_{t+1} = 2 eta_t a_t - eta_t^2 s_t on the recorded run
    D = np.append(table["D"].to_numpy(), 0.0)  # x* = x_T: D_T = 0
    eta, a, s = table["lr"].to_numpy(), table["a"].to_numpy(), table["s"].to_numpy()
    lhs, rhs = D[:-1] - D[1:], 2 * eta * a - eta**2 * s
    assert np.allclose(lhs, rhs, rtol=1e-6, atol=1e-9 * D.max())
    # every step's loss was rebuilt bit for bit from the recorded batches and RNG states
    check = summary.loss_check
    assert check["steps"] == len(table) and check["equal"] == len(table)
    assert np.isfinite(table["b"]).all() and summary.source == "lightning"
    # the last step's loss at x* is the loss at x_T: b of a step is l(x_t) - l(x_T)
    assert table["loss"].iloc[0] != table["loss_star"].iloc[0]
    # measuring left the trained model untouched (parameters and BN statistics)
    final = torch.load(out / "final_state.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(final[k], v), k
    # trajreg analyze works on it unchanged
    again = analyze(out, eps=[0.0, 0.1])
    assert set(again.gamma_hat) == {"0.0", "0.1"} and again.source == "lightning"


def test_tensorboard_mirror(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    fit(out, tensorboard=True, figures=False)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("step/D", "step/a", "step/s", "step/b", "step/r", "epoch/gamma_hat_eps0.05"):
        assert tag in tags
    table = pd.read_parquet(out / "metrics.parquet")
    logged = [e.value for e in events.Scalars("step/D")]
    assert np.allclose(logged, table["D"].to_numpy(), rtol=1e-6)


def test_existing_output_is_refused(tmp_path):
    from trajreg.errors import UserError

    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="already exists"):
        RegularityCallback(tmp_path / "run")


@pytest.mark.parametrize("mode", ["sample", "sketch"])
def test_callback_records_in_the_one_pass_modes(tmp_path, mode):
    """``mode`` reaches the session: sample measures its kept steps exactly (their
    micro-batches rebuilt bit for bit), sketch every step with its exact check sample;
    ``interpolation=False`` leaves mli out."""
    import warnings

    from trajreg.record.modes.sample import SampleMode
    from trajreg.record.modes.sketch import SketchMode

    chosen = (SampleMode(rate=0.5, seed=1, min_steps=0) if mode == "sample"
              else SketchMode(dim=512, check_rate=0.3, seed=2))  # d = 2474 > k: hashed
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 steps: too few samples for intervals
        _, cb = fit(out, mode=chosen, interpolation=mode == "sketch", figures=False)
    table = pd.read_parquet(out / "metrics.parquet")
    summary = read_summary(out)
    assert summary.n_steps == 20 and summary.source == "lightning"
    check = summary.loss_check
    assert check["steps"] == check["equal"] > 0
    assert np.isfinite(table["b"]).all()
    if mode == "sample":
        assert 0 < len(table) < 20 and set(table["step"]) == set(chosen.sampler.kept(20))
        assert summary.mli is None and "gamma_hat_ci" in summary.to_dict()
    else:
        assert table["step"].tolist() == list(range(20))
        assert summary.sketch_error["n"] == len(chosen.sampler.kept(20))
        assert summary.mli is not None and summary.mli["loss"][-1] == summary.f_star


class NoisyNet(Net):
    """A training step whose loss depends on Python's own random generator, which the
    session does not restore: the rebuilt losses cannot match the logged ones."""

    def training_step(self, batch, batch_idx):
        import random

        x, y = batch
        x = x.flatten(1).clone()
        x[:, random.randrange(x.shape[1])] = 1.0  # augmented with a generator not replayed
        return torch.nn.functional.cross_entropy(self.net(x), y)


def test_a_loss_mismatch_fails_the_fit_and_writes_nothing(tmp_path):
    from trajreg.integrations.session import LossMismatch

    torch.manual_seed(0)
    out = tmp_path / "run"
    trainer = pl.Trainer(max_epochs=1, callbacks=[RegularityCallback(out, figures=False)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    with pytest.raises(LossMismatch, match="not the losses the training script logged"):
        trainer.fit(NoisyNet(), loader())
    assert list(tmp_path.iterdir()) == []


def test_trackers_log_into_the_trainers_loggers(monkeypatch, tmp_path):
    """With a WandbLogger and an MLFlowLogger the mirrors go into their runs (offline: W&B's
    run file, a file: store), beside what Lightning logged, and leave them to Lightning."""
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    from tests.tracker_files import finite, offline, wandb_runs

    store = offline(monkeypatch, tmp_path)
    loggers = [WandbLogger(name="fit", project="mine", save_dir=str(tmp_path), offline=True),
               MLFlowLogger(experiment_name="mine", tracking_uri=f"file:{store}")]
    out = tmp_path / "run"
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=2, callbacks=[RegularityCallback(
                             out, trackers=("wandb", "mlflow"), figures=False)],
                         logger=loggers, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(Net(), loader())
    wandb.finish()  # Lightning leaves its run open
    table = pd.read_parquet(out / "metrics.parquet")
    (run,) = wandb_runs(tmp_path)
    assert (run.name, run.project) == ("fit", "mine")
    assert any("train_loss" in row for row in run.history)  # Lightning's own
    steps, values = run.series("trajreg/step/D", "trajreg/step")
    want_steps, want = finite(table, "D")
    assert steps == want_steps and values == want.tolist()
    assert run.artifacts[0][1] == "trajreg-run"
    client = mlflow.MlflowClient(f"file:{store}")
    logged = client.get_run(loggers[1].run_id)
    assert "train_loss" in logged.data.metrics and "trajreg/gamma_bar" in logged.data.metrics
    history = client.get_metric_history(loggers[1].run_id, "trajreg/step/s")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == (
        finite(table, "s")[1].tolist())
    assert len(client.search_runs([logged.info.experiment_id])) == 1  # no run of its own
