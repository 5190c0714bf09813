"""``curvature=`` on RegularitySession and the callbacks (record.curvature for runs that
other code trains): the session's lambda_max equals the reference loop's on the same
training; in store, sample and sketch modes it is the top eigenvalue of the full Hessian
of the step's loss rebuilt from its batch at x_t, with batch norm and dropout as the step
saw them (and Adam's preconditioned one that of P^-1/2 H P^-1/2); the Lightning and
Hugging Face callbacks write the columns end to end; bad options are one clear error."""

from __future__ import annotations

import copy
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import hessian
from tests.conftest import tiny
from trajreg.errors import UserError
from trajreg.integrations import RegularitySession
from trajreg.record.curvature import COLUMNS, curvature_steps, read_rows
from trajreg.record.modes.sample import SampleMode
from trajreg.record.modes.sketch import SketchMode
from trajreg.record.modes.store import StoreMode
from trajreg.record.recorder import optimizer_params
from trajreg.run import analyze, rundir
from trajreg.run.runner import run
from trajreg.train.config import CurvatureConfig, load_config
from trajreg.train.data import load_data
from trajreg.train.loop import (
    batches,
    build,
    clip_gradients,
    minibatch_loss,
    steps_per_epoch,
    total_steps,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = tiny(data={"name": "digits", "batch_size": 64, "subset": 384},
                 model={"width": 16, "depth": 2, "norm": "batch", "dropout": 0.2},
                 optim={"name": "sgd", "lr": 0.05, "momentum": 0.9}, train={"epochs": 2},
                 record={"mode": "store", "curvature": {"rate": 0.3}})


def test_the_session_measures_what_the_reference_loop_measures(tmp_path: Path) -> None:
    """A hand-written loop that trains exactly as ``trajreg run`` does (its model, batches,
    random states), measured by a session with the same curvature option: the same steps
    sampled (the run's seed 0, the store mode's 0) and the same four quantities."""
    cfg = load_config(REFERENCE)
    run(cfg, tmp_path / "reference", figures=False, progress=False)
    data = load_data(cfg.data)
    model, opt, sched = build(cfg, data)
    per_epoch = steps_per_epoch(cfg, data)

    def loss_fn(m: torch.nn.Module, batch: tuple) -> torch.Tensor:
        return minibatch_loss(cfg, m, data, batch[0], int(batch[1]))

    session = RegularitySession(tmp_path / "session", source="plain", figures=False,
                                steps=total_steps(cfg, data), curvature=dict(rate=0.3))
    session.start(model, opt)
    for step, _, idx in batches(cfg, data):
        batch = (idx, torch.tensor(step))
        session.before_batch()
        loss = loss_fn(model, batch)
        session.after_batch(batch, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(cfg, opt)
        opt.step()
        sched.step()
        if (step + 1) % per_epoch == 0:
            session.end_epoch()
    summary = session.finish(model, loss_fn)
    ref = rundir.read_metrics(tmp_path / "reference").set_index("step")
    got = rundir.read_metrics(tmp_path / "session").set_index("step")
    # the same training, bit for bit
    np.testing.assert_array_equal(got["D"].to_numpy(), ref["D"].to_numpy())
    sampled = got.index[got["lambda_max"].notna()]
    assert list(sampled) == list(ref.index[ref["lambda_max"].notna()])
    assert list(sampled) == curvature_steps(len(got), 0.3, 0) and len(sampled) >= 3
    for column in ("lambda_max", "curv_update", "critical_sharpness", "eos_threshold",
                   "lambda_max_iterations"):
        np.testing.assert_allclose(got.loc[sampled, column], ref.loc[sampled, column],
                                   rtol=1e-5, err_msg=column)
    reference = rundir.read_summary(tmp_path / "reference").curvature
    assert summary.curvature is not None and reference is not None
    assert summary.curvature["steps"] == reference["steps"] == len(sampled)
    assert summary.curvature["lambda_max_star"] == pytest.approx(reference["lambda_max_star"],
                                                                 rel=1e-5)
    # re-analysis keeps the columns and the summary's curvature
    again = analyze(tmp_path / "session", eps=[0.0, 0.1])
    assert again.curvature is not None and again.curvature["steps"] == len(sampled)
    assert again.curvature["lambda_max_star"] == summary.curvature["lambda_max_star"]
    assert rundir.read_config(tmp_path / "session").external is not None


# ---------------------------------------------------------------------- brute force

class Net(torch.nn.Module):
    """Batch norm, dropout and a parameter the loss never uses (a model's unused head):
    its rows of the Hessian are zero."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                                        torch.nn.Tanh(), torch.nn.Dropout(0.3),
                                        torch.nn.Linear(6, 3))
        self.unused = torch.nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def loss_fn(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def full_hessian(model: torch.nn.Module, x: np.ndarray, batch: tuple,
                 rng: torch.Tensor) -> np.ndarray:
    """The Hessian of the loss on ``batch`` with the random state ``rng`` (dropout's
    masks) in the model's parameters at the flat point x (the optimizer's order),
    batch norm in train mode (the batch's statistics)."""
    model = copy.deepcopy(model).train()

    def loss_of(forward) -> torch.Tensor:
        torch.set_rng_state(rng)
        return torch.nn.functional.cross_entropy(forward(batch[0]), batch[1])

    return hessian.full_hessian(model, x, loss_of)


def train(out: Path, mode, optimizer: str, rate: float, steps: int = 10):
    """A plain loop on ``Net``: every step's batch and random state, the optimizer's
    preconditioner sqrt(v_hat) + eps after each step (Adam), and the session's summary."""
    torch.manual_seed(0)
    model = Net()
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=0.02,
                                                      betas=(0.8, 0.99))
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    params = optimizer_params(opt)
    assert [id(p) for p in params] == [id(p) for p in model.parameters()]
    data = [(torch.randn(16, 4), torch.randint(3, (16,))) for _ in range(steps)]
    seen, precond = [], []
    session = RegularitySession(out, source="plain", mode=mode, steps=steps,
                                epoch_steps=5, interpolation=False,
                                curvature=dict(rate=rate, iterations=60, tol=1e-7))
    session.start(model, opt)
    for i, batch in enumerate(data):
        seen.append(torch.get_rng_state())
        session.before_batch()
        loss = loss_fn(model, batch)
        session.after_batch(batch, loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if optimizer == "adam":
            # the unused parameter has no state: v = 0 there, as Adam would start it
            v = np.concatenate([(opt.state[p]["exp_avg_sq"].double() / (1 - 0.99 ** (i + 1)))
                                .reshape(-1).numpy() if p in opt.state
                                else np.zeros(p.numel()) for p in params])
            precond.append(np.sqrt(v) + 1e-8)
    summary = session.finish(model, loss_fn)
    return model, data, seen, precond, summary


MODES = {"store": StoreMode, "sample": lambda: SampleMode(rate=0.5, seed=3, min_steps=0),
         "sketch": lambda: SketchMode(check_rate=0.5, seed=3, check_min_steps=0)}


@pytest.mark.filterwarnings("ignore:.*keeps about.*:UserWarning",
                            "ignore:insufficient samples:UserWarning")
@pytest.mark.parametrize("name, optimizer", [("store", "adam"), ("sample", "sgd"),
                                             ("sketch", "sgd")])
def test_every_mode_against_the_full_hessian(tmp_path: Path, name: str, optimizer: str) -> None:
    mode = MODES[name]()
    model, data, seen, precond, summary = train(tmp_path / "run", mode, optimizer, 0.6)
    table = rundir.read_metrics(tmp_path / "run").set_index("step")
    trajectory = tmp_path / "run" / "trajectory"
    rows = {r.step: r for r in read_rows(trajectory)}
    seed = 0 if name == "store" else 3  # the mode's seed
    wanted = [t for t in curvature_steps(10, 0.6, seed) if mode.keep(t)]
    sampled = list(table.index[table["lambda_max"].notna()])
    assert sampled == wanted == sorted(rows) and len(sampled) >= 3, (sampled, wanted)
    if name == "sample":
        assert sorted(table.index) == list(mode.sampler.kept(10))  # its own rows only
    own = type(mode).rows(trajectory)
    for t in sampled:
        # x_t as the record mode keeps it (the sketch mode: its exact check sample only)
        x = rows[t].x
        if name == "store" or mode.sampler.keep(t):
            np.testing.assert_array_equal(np.asarray(own(t)), x)
            u = x.astype(np.float64) - np.asarray(own(t + 1), dtype=np.float64)
            np.testing.assert_allclose(rows[t].u, u, rtol=0, atol=0)
        else:
            u = rows[t].u
        H = full_hessian(model, x, data[t], seen[t])
        assert np.abs(H[:2]).max() == 0  # the unused parameter (a module's own come first)
        got = table.loc[t]
        assert got["lambda_max_converged"] == 1.0
        assert got["lambda_max"] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-4)
        assert got["curv_update"] == pytest.approx(u @ H @ u / (u @ u), rel=1e-4, abs=1e-6)
        assert np.isfinite(got["critical_sharpness"]) and got["critical_sharpness"] > 0
        if optimizer == "adam":
            s = 1.0 / np.sqrt(precond[t])
            exact = np.linalg.eigvalsh(s[:, None] * H * s[None, :])[-1]
            # float32 Hessian-vector products scaled by P^-1/2 (up to 1/sqrt(eps)): the
            # float64 model's value is the exact one to 1e-7, the float32 one within 2e-4
            assert got["lambda_max_precond"] == pytest.approx(exact, rel=1e-3)
            assert got["eos_threshold"] == pytest.approx(3.6 / (0.2 * 0.02))
        else:
            assert math.isnan(got["lambda_max_precond"])
            assert got["eos_threshold"] == pytest.approx(3.0 / 0.1)
    c = summary.curvature
    assert c is not None and c["steps"] == len(sampled)
    assert c["compared"] == ("lambda_max_precond" if optimizer == "adam" else "lambda_max")
    # x* = x_T on the last measured step's batch
    last = max(t for t in range(10) if mode.keep(t))
    x_end = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    H = full_hessian(model, x_end, data[last], seen[last])
    assert c["lambda_max_star"] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-4)


def test_a_sample_without_curvature_steps_says_so(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """No step of the mode's sample in the curvature sample: the columns are NaN, the
    summary counts 0 steps, and one line says why."""
    train(tmp_path / "run", SampleMode(rate=0.2, seed=0, min_steps=0), "sgd", 0.01)
    assert "curvature" in capsys.readouterr().err
    summary = rundir.read_summary(tmp_path / "run")
    assert summary.curvature is not None and summary.curvature["steps"] == 0
    assert not (tmp_path / "run" / "sharpness.png").exists()


class OnceDifferentiable(torch.autograd.Function):
    """x^2 with a backward that cannot be differentiated again (as custom kernels'
    often cannot)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


@pytest.mark.parametrize("where", ["cdist", "last"])
def test_a_loss_without_second_derivative_leaves_the_rest_measured(
        tmp_path: Path, capsys: pytest.CaptureFixture, where: str) -> None:
    """The Hessian-vector products fail after training (torch.cdist has no double
    backward; a once-differentiable function applied last leaves the gradient without a
    graph, where H would read 0): one line says so, the curvature columns are NaN with
    the error in summary.curvature, and the run directory is written with everything
    else."""
    torch.manual_seed(0)
    # one layer: behind a second one the first's output would give every gradient a graph
    model = torch.nn.Sequential(torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(8, 3), torch.randn(8, 1))

    def squared(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        if where == "cdist":
            return torch.cdist(m(b[0]), b[1]).pow(2).mean()
        return OnceDifferentiable.apply(m(b[0]) - b[1]).mean()

    session = RegularitySession(tmp_path / "run", source="plain", figures=False,
                                curvature=dict(rate=1.0))
    session.start(model, opt)
    for _ in range(4):
        session.before_batch()
        loss = squared(model, batch)
        session.after_batch(batch, loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    summary = session.finish(model, squared)
    err = capsys.readouterr().err
    said = "_cdist_backward" if where == "cdist" else "has no graph"
    assert "curvature: not measured" in err and said in err
    assert summary.curvature is not None and said in summary.curvature["error"]
    assert summary.curvature["steps"] == 0
    table = rundir.read_metrics(tmp_path / "run")
    assert table["lambda_max"].isna().all() and np.isfinite(table["D"]).all()
    assert summary.loss_check["equal"] == 4
    again = analyze(tmp_path / "run", eps=[0.0, 0.1])
    assert again.curvature is not None and again.curvature["error"] == summary.curvature["error"]


# ---------------------------------------------------------------------- the options

@pytest.mark.parametrize("option, message", [
    (dict(rate=0.0), r"curvature\.rate: must be in \(0, 1\]"),
    (dict(rate=1.5), r"curvature\.rate: must be in \(0, 1\]"),
    (dict(rate="0.1"), r"curvature\.rate: must be a number"),
    (dict(iterations=0), r"curvature\.iterations: must be a whole number >= 1"),
    (dict(iterations=2.5), r"curvature\.iterations: must be an integer"),
    (dict(tol=0), r"curvature\.tol: must be > 0"),
    (dict(critical="yes"), r"curvature\.critical: must be true or false"),
    (dict(rate=0.1, sample=3), r"curvature\.sample: unknown key \(allowed: critical, "
                               r"iterations, rate, tol\)"),
    (CurvatureConfig(rate=2.0), r"curvature\.rate: must be in \(0, 1\]"),
    (0.1, r"curvature: must be a dict of rate, iterations, tol, critical or a "
          r"CurvatureConfig, got float"),
])
def test_bad_options_are_one_line(tmp_path: Path, option, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        RegularitySession(tmp_path / "run", source="plain", curvature=option)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_the_options_default_as_in_a_config(tmp_path: Path) -> None:
    session = RegularitySession(tmp_path / "a", source="plain", curvature={})
    assert session.curvature == CurvatureConfig()
    given = CurvatureConfig(rate=0.5, iterations=3, tol=0.1, critical=False)
    assert RegularitySession(tmp_path / "b", source="plain",
                             curvature=given).curvature == given
    assert RegularitySession(tmp_path / "c", source="plain").curvature is None


def _two_ranks(rank: int, init: str, out: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        from torch.distributed.fsdp import fully_shard

        model = fully_shard(torch.nn.Linear(2, 1))
        session = RegularitySession(Path(out) / "run", source="plain", curvature={})
        try:
            session.start(model, torch.optim.SGD(model.parameters(), lr=0.1))
            queue.put((rank, "started"))
        except UserError as exc:
            queue.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()


def test_curvature_with_sharded_parameters_is_refused(tmp_path: Path) -> None:
    """FSDP2 (no double backward through it in this torch): every rank refuses at start,
    with the same one line, and nothing is left behind."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_two_ranks, args=(r, init, str(tmp_path), queue))
             for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    answers = dict(queue.get(timeout=5) for _ in procs)
    assert set(answers) == {0, 1}
    for message in answers.values():
        assert message.startswith("RegularitySession(curvature=...) is not yet supported "
                                  "with sharded (FSDP2, DTensor) parameters"), message
    assert not any(p.name.startswith(".run") or p.name == "run" for p in tmp_path.iterdir())


# ---------------------------------------------------------------------- the callbacks

def _columns_written(out: Path, steps: int) -> None:
    table = rundir.read_metrics(out)
    assert set(COLUMNS) <= set(table.columns) and len(table) == steps
    sampled = table[table["lambda_max"].notna()]
    assert len(sampled) >= 1
    assert np.isfinite(sampled[["lambda_max", "curv_update", "eos_threshold"]]).all().all()
    summary = rundir.read_summary(out)
    assert summary.curvature is not None and summary.curvature["steps"] == len(sampled)
    assert (out / "sharpness.png").is_file()


def test_lightning_callback_writes_the_curvature(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from trajreg.integrations.lightning import RegularityCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                           torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                           torch.nn.Linear(8, 3))

        def training_step(self, batch, batch_idx):
            loss = loss_fn(self.net, batch)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(96, 4), torch.randint(3, (96,)))
    cb = RegularityCallback(tmp_path / "run", curvature=dict(rate=0.5, iterations=8),
                            interpolation=False)
    trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[cb],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Module(), torch.utils.data.DataLoader(ds, batch_size=16))
    _columns_written(tmp_path / "run", 3)
    table = rundir.read_metrics(tmp_path / "run")
    assert np.isfinite(table["lambda_max_precond"].dropna()).all()  # AdamW
    assert rundir.read_summary(tmp_path / "run").curvature["compared"] == "lambda_max_precond"


def test_huggingface_callback_writes_the_curvature(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from tests.integrations.hf_fixtures import Tokens, tiny_gpt2
    from trajreg.integrations.huggingface import RegularityCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16, num_train_epochs=1,
        learning_rate=5e-3, logging_strategy="no", save_strategy="no", report_to=[],
        use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    cb = RegularityCallback(tmp_path / "run", figures=True, interpolation=False,
                            curvature=dict(rate=0.5, iterations=5, critical=False))
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args,
                                   train_dataset=Tokens(n=64), callbacks=[cb])
    trainer.train()
    _columns_written(tmp_path / "run", trainer.state.global_step)
    table = rundir.read_metrics(tmp_path / "run")
    assert table["critical_sharpness"].isna().all()  # critical=False
