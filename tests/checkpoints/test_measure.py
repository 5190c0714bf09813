"""trajreg checkpoints on a reference-loop run that saved a checkpoint every epoch.

The measurement is checked against brute force (flattened checkpoints, F and its
gradient by autograd, ``principle.epochwise``) and against the store run of the very
same training: the checkpoints are its epoch-end iterates, so D_k, the path over the
epoch ends and the interpolation's values must be the run's.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny
from trajreg import principle as P
from trajreg.checkpoints import CheckpointOptions, measure_checkpoints
from trajreg.checkpoints.measure import SeriesMeasurement, series_table, summarize_series
from trajreg.checkpoints.series import Checkpoint
from trajreg.checkpoints.target import Target, from_config
from trajreg.cli import main
from trajreg.record.modes import get_mode
from trajreg.run import rundir
from trajreg.run.runner import run
from trajreg.train.config import load_config

STEPS = [0, 8, 16, 24, 32]  # 4 epochs of 8 steps (512 digits, 80% training, batch 64)


@pytest.fixture(scope="module")
def store_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ck") / "run"
    cfg = load_config(tiny(train={"epochs": 4, "checkpoints": True}))
    run(cfg, out, figures=False, progress=False)
    return out


@pytest.fixture(scope="module")
def measured(store_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "measured"
    rc = main([ "checkpoints", str(store_run / "checkpoints"), "--config",
               str(store_run / "config.yaml"), "--out", str(out), "-q"])
    assert rc == 0
    return out


def _flat(state: dict[str, torch.Tensor], names: list[str]) -> np.ndarray:
    return np.concatenate([state[n].detach().double().reshape(-1).numpy() for n in names])


def brute_force(store_run: Path) -> dict[str, np.ndarray]:
    """x_k, F(x_k) and grad F(x_k) of every checkpoint, from the files and autograd."""
    target = from_config(store_run / "config.yaml")
    model = target.model
    names = [n for n, _ in model.named_parameters()]
    files = sorted((store_run / "checkpoints").glob("step-*.pt"))
    xs, grads, F = [], [], []
    for file in files:
        state = torch.load(file, weights_only=True)
        model.load_state_dict(state)
        model.eval()
        model.zero_grad(set_to_none=True)
        total = 0.0
        for batch in target.batches:
            loss = target.loss_fn(model, batch)
            total += loss.item()
            (loss / target.denominator).backward()
        F.append(total / target.denominator)
        xs.append(_flat(state, names))
        grads.append(np.concatenate([p.grad.double().reshape(-1).numpy()
                                     for p in model.parameters()]))
    steps = [int(f.stem.split("-")[1]) for f in files]
    return {"x": np.stack(xs), "g": np.stack(grads), "F": np.asarray(F),
            "steps": np.asarray(steps)}


def test_epochwise_quantities_equal_brute_force(store_run: Path, measured: Path) -> None:
    table = pd.read_parquet(measured / "metrics.parquet")
    ref = brute_force(store_run)
    assert table["step"].tolist() == ref["steps"].tolist() == STEPS
    np.testing.assert_array_equal(table["F"].to_numpy(), ref["F"])
    x_star, f_star = ref["x"][-1], ref["F"][-1]
    q = P.epochwise_quantities(ref["x"], ref["g"], ref["F"], x_star, f_star)
    scale = np.abs(q.a).max()
    np.testing.assert_allclose(table["a"], q.a, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(table["b"], q.b, rtol=0, atol=0)
    np.testing.assert_allclose(table["s"], q.s, rtol=1e-9)
    diff = ref["x"] - x_star
    np.testing.assert_allclose(table["D"], np.einsum("ij,ij->i", diff, diff), rtol=1e-12)
    u = ref["x"][:-1] - ref["x"][1:]
    np.testing.assert_allclose(table["a_disp"][:-1], np.einsum("ij,ij->i", diff[:-1], u),
                               rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(table["s_disp"][:-1], np.einsum("ij,ij->i", u, u), rtol=1e-12)
    init = ref["x"] - ref["x"][0]
    np.testing.assert_allclose(table["dist_init"], np.sqrt(np.einsum("ij,ij->i", init, init)),
                               rtol=1e-12)
    summary = json.loads((measured / "summary.json").read_text())
    start, end = summary["window"]
    w = np.zeros(len(table), dtype=bool)
    w[start:end] = True
    w[-1] = False
    for key, value in summary["gamma_hat"].items():
        expected = P.epochwise_gamma_hat(ref["x"][w], ref["g"][w], ref["F"][w], x_star,
                                         f_star, eps=float(key))
        assert value == pytest.approx(expected, rel=1e-9)
    assert summary["star_convex_fraction"] == P.star_convex_fraction(q.a[w], q.b[w])
    assert summary["record_mode"] == "checkpoints" and summary["reference_step"] == 32


def test_distances_path_and_interpolation_equal_the_store_run(store_run: Path,
                                                              measured: Path) -> None:
    series = pd.read_parquet(measured / "metrics.parquet")
    summary = json.loads((measured / "summary.json").read_text())
    recorded = rundir.read_metrics(store_run)
    run_summary = rundir.read_summary(store_run)
    ends = [0, *run_summary.epoch_ends]
    # D_k: the store run's D at the epoch ends (x* the last iterate in both)
    by_step = dict(zip(recorded["step"], recorded["D"], strict=True))
    for k, step in enumerate(ends[:-1]):
        assert series["D"][k] == pytest.approx(by_step[step], rel=1e-12)
    # the checkpoints are the store's epoch-end iterates, bit for bit
    rows = get_mode("store").rows(store_run / "trajectory")
    xs = np.stack([rows(t) for t in ends]).astype(np.float64)
    steps = np.sqrt(np.sum(np.diff(xs, axis=0) ** 2, axis=1))
    expected = P.path_ratio(steps, float(np.linalg.norm(xs[0] - xs[-1])))
    assert summary["path_ratio"] == pytest.approx(expected, rel=1e-12)
    # F at the checkpoints is the run's F_k, and the interpolation is the run's, value by
    # value: the same evaluation of the same states
    assert series["F"].tolist() == run_summary.full_loss
    assert summary["mli"]["alpha"] == run_summary.mli["alpha"]
    assert summary["mli"]["loss"] == run_summary.mli["loss"]
    assert summary["mli"]["monotone"] == run_summary.mli["monotone"]


def test_identity_and_bound_hold_on_the_real_series(measured: Path) -> None:
    table = pd.read_parquet(measured / "metrics.parquet")
    summary = json.loads((measured / "summary.json").read_text())
    D, a_d, s_d = (table[c].to_numpy() for c in ("D", "a_disp", "s_disp"))
    residual = P.identity_residual(D, a_d[:-1], s_d[:-1], np.ones(len(D) - 1))
    assert np.abs(residual).max() <= 1e-12 * D.max()
    assert summary["checkpoints"]["identity_residual"] <= 1e-12
    assert summary["bound"]["holds"] is True
    gamma_disp = summary["checkpoints"]["gamma_hat_disp"]["0.0"]
    start, end = summary["window"]
    r = table["r_disp"].to_numpy()[start:end]
    assert gamma_disp == pytest.approx(np.nanmin(r[np.isfinite(r)]), rel=1e-12)
    for name in ("loss.png", "a_k.png", "gamma_per_interval.png", "mli.png",
                 "checksums.json", "config.yaml"):
        assert (measured / name).is_file(), name


def test_identity_check_warns_when_the_series_is_inconsistent() -> None:
    """The self-check: D that does not telescope with the displacements (a file that
    changed while it was read) is a loud warning, not a silent number."""
    cks = [Checkpoint(Path(f"c{k}"), k, "given") for k in range(3)]
    target = Target(torch.nn.Linear(1, 1), lambda model, b: model(b).sum(), [0], 1.0)

    def series(D: list[float]) -> SeriesMeasurement:
        return SeriesMeasurement(cks, 2, F=np.array([3.0, 2.0, 1.0]), D=np.array(D),
                                 a=np.array([2.0, 1.0, 0.0]), s=np.array([1.0, 1.0, 0.0]),
                                 dist_init=np.zeros(3), a_disp=np.array([2.0, 1.0]),
                                 s_disp=np.array([1.0, 1.0]), n_params=2)

    broken = series([5.0, 1.0, 0.0])  # 5 - 1 != 2 * 2 - 1
    with pytest.warns(RuntimeWarning, match="exact identity"):
        summarize_series(broken, series_table(broken), CheckpointOptions(), target, {})
    whole = series([4.0, 1.0, 0.0])  # 4 - 1 = 2 * 2 - 1 and 1 - 0 = 2 * 1 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summarize_series(whole, series_table(whole), CheckpointOptions(), target, {})


def _copy_series(store_run: Path, folder: Path, write) -> None:
    folder.mkdir()
    for file in sorted((store_run / "checkpoints").glob("step-*.pt")):
        write(torch.load(file, weights_only=True), folder, int(file.stem.split("-")[1]))


@pytest.mark.parametrize("form", ["safetensors", "lightning_like", "module_prefix"])
def test_formats_measure_the_same(store_run: Path, measured: Path, tmp_path: Path,
                                  form: str) -> None:
    """A safetensors series, state dicts inside a dict (``state_dict`` with a module
    prefix, as Lightning writes), and DDP's ``module.`` prefix measure bit for bit as
    the plain torch.save series does."""
    from safetensors.torch import save_file

    def write(state: dict, folder: Path, step: int) -> None:
        if form == "safetensors":
            save_file({k: v.contiguous() for k, v in state.items()},
                      str(folder / f"model_step{step}.safetensors"))
        elif form == "lightning_like":
            torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()},
                        "global_step": step, "epoch": 0}, folder / f"e{step}.ckpt")
        else:
            torch.save({f"module.{k}": v for k, v in state.items()},
                       folder / f"ck-step{step}.pt")

    _copy_series(store_run, tmp_path / "series", write)
    out, summary = measure_checkpoints(tmp_path / "series", tmp_path / "out",
                                       config=store_run / "config.yaml", progress=False)
    a = pd.read_parquet(measured / "metrics.parquet").drop(columns=["path"])
    b = pd.read_parquet(out / "metrics.parquet").drop(columns=["path"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    if form == "lightning_like":
        assert summary.checkpoints["step_from"] == ["global_step"]


def test_out_of_order_names_are_sorted_by_step(store_run: Path, tmp_path: Path) -> None:
    """Names whose text order is not their step order ("step16" < "step8" as text), and
    an explicit step list given out of order."""
    files = sorted((store_run / "checkpoints").glob("step-*.pt"))
    folder = tmp_path / "series"
    folder.mkdir()
    for file in files:
        step = int(file.stem.split("-")[1])
        (folder / f"run_step{step}.pt").write_bytes(file.read_bytes())
    assert sorted(p.name for p in folder.iterdir())[1] == "run_step16.pt"
    _, summary = measure_checkpoints(folder, tmp_path / "a", config=store_run / "config.yaml",
                                     progress=False, figures=False, interval_points=0)
    assert summary.checkpoints["steps"] == STEPS
    given = list(reversed(files))
    _, again = measure_checkpoints(given, tmp_path / "b", config=store_run / "config.yaml",
                                   steps=STEPS[::-1], progress=False, figures=False,
                                   interval_points=0)
    assert again.checkpoints["steps"] == STEPS
    assert again.full_loss == summary.full_loss
    assert again.gamma_hat == summary.gamma_hat


def test_reference_best_and_sketch(store_run: Path, tmp_path: Path) -> None:
    """reference best: x* the checkpoint with the lowest F, here a middle one (the series
    returns to its start); a sketch of each checkpoint estimates the exact measurement."""
    files = sorted((store_run / "checkpoints").glob("step-*.pt"))
    series = [*files, files[0]]  # back to the start: F rises again
    steps = [*STEPS, 40]
    cfg = store_run / "config.yaml"
    _, best = measure_checkpoints(series, tmp_path / "best", config=cfg, steps=steps,
                                  reference="best", progress=False, figures=False)
    assert best.reference_step == 32 and best.checkpoints["reference_index"] == 4
    table = pd.read_parquet(tmp_path / "best" / "metrics.parquet")
    assert table["D"][4] == 0.0 and table["b"][4] == 0.0
    assert table["D"][5] == pytest.approx(table["D"][0], rel=1e-15)
    _, exact = measure_checkpoints(files, tmp_path / "exact", config=cfg, progress=False,
                                   figures=False, interval_points=0, mli=False)
    _, sketched = measure_checkpoints(files, tmp_path / "sk", config=cfg, progress=False,
                                      figures=False, interval_points=0, mli=False,
                                      sketch_dim=2048)
    t_e = pd.read_parquet(tmp_path / "exact" / "metrics.parquet")
    t_s = pd.read_parquet(tmp_path / "sk" / "metrics.parquet")
    np.testing.assert_array_equal(t_e["F"], t_s["F"])
    np.testing.assert_allclose(t_e["s"], t_s["s"], rtol=1e-12)  # exact in both
    # CountSketch: relative error of order 1/sqrt(k) = 2% for these vectors
    for column in ("D", "a", "a_disp", "s_disp"):
        e, s = t_e[column].to_numpy()[:-1], t_s[column].to_numpy()[:-1]
        assert np.all(np.abs(s - e) <= 0.15 * np.abs(e).max()), column
    assert sketched.checkpoints["sketch_dim"] == 2048
    assert sketched.checkpoints["identity_residual"] <= 1e-12


def _fails(args: list[str], capsys: pytest.CaptureFixture[str], out: Path, match: str) -> None:
    rc = main(["checkpoints", *args, "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_bad_series_fail_in_one_line_with_nothing_written(store_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    cfg = ["--config", str(store_run / "config.yaml")]
    files = sorted((store_run / "checkpoints").glob("step-*.pt"))
    out = tmp_path / "out"

    empty = tmp_path / "empty"
    empty.mkdir()
    _fails([str(empty), *cfg], capsys, out, "no checkpoints found")
    _fails([str(tmp_path / "nowhere"), *cfg], capsys, out, "no such file or directory")

    def series(name: str, change) -> str:
        """A copy of the series with ``change(state)`` applied to one checkpoint's state
        (``change`` None: that file's bytes cut in half)."""
        folder = tmp_path / name
        folder.mkdir()
        for file in files:
            if file != files[2]:
                (folder / file.name).write_bytes(file.read_bytes())
            elif change is None:
                (folder / file.name).write_bytes(file.read_bytes()[: file.stat().st_size // 2])
            else:
                state = torch.load(file, weights_only=True)
                change(state)
                torch.save(state, folder / file.name)
        return str(folder)

    def drop(state: dict) -> None:
        del state[next(iter(state))]

    def reshape(state: dict) -> None:
        key = next(k for k, v in state.items() if v.dim() == 2)
        state[key] = state[key][:, :-1].clone()

    _fails([series("truncated", None), *cfg], capsys, out, "not a readable checkpoint")
    garbage = series("garbage", drop)
    (Path(garbage) / files[1].name).write_bytes(b"\x00not a checkpoint" * 100)
    _fails([garbage, *cfg], capsys, out, "not a readable checkpoint")
    _fails([series("missing", drop), *cfg], capsys, out, "no parameter")
    _fails([series("shaped", reshape), *cfg], capsys, out, "in the checkpoint")

    safetensors = tmp_path / "step-0.safetensors"
    from safetensors.torch import save_file

    save_file(torch.load(files[0], weights_only=True), str(safetensors))
    safetensors.write_bytes(safetensors.read_bytes()[:-100])
    _fails([str(safetensors), str(files[1]), *cfg], capsys, out, "not a readable safetensors")
    _fails([str(files[0]), *cfg], capsys, out, "at least two")
    _fails([str(files[0]), str(files[1]), *cfg, "--steps", "5"], capsys, out, "--steps")
    _fails([str(store_run / "checkpoints")], capsys, out, "name the model")


def test_analyze_refuses_a_checkpoint_run(measured: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["analyze", str(measured), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "measured from checkpoints" in err


def test_options_validate_at_the_edge() -> None:
    from trajreg.errors import ConfigError

    with pytest.raises(ConfigError, match="reference"):
        CheckpointOptions(reference="middle")
    with pytest.raises(ConfigError, match="measure.sketch_dim"):
        CheckpointOptions.from_dict({"sketch_dim": 0})
    with pytest.raises(ConfigError, match="measure.colour: unknown option"):
        CheckpointOptions.from_dict({"colour": 1})
    assert CheckpointOptions(reference="last").reference == "final"
    assert math.isclose(CheckpointOptions(eps=[-0.0]).eps[0], 0.0)
