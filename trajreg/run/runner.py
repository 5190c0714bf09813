"""One run end to end: train, record, measure, analyse, write the run directory.

Run directory::

    config.yaml        the resolved config, with trajreg and torch versions
    metrics.parquet    one row per optimizer step (see ``analysis.METRIC_COLUMNS``)
    summary.json       the regularity analysis (``analysis.summarize``) and run facts
    *.png              figures (``figures.FIGURES``)
    final_state.pt     the model's state at the end (parameters and buffers)
    trajectory/        every iterate x_t (record mode ``store`` only)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from trajreg.errors import ReplayMismatch, UserError
from trajreg.record.recorder import Recorder, flat_params, optimizer_params, set_flat_params
from trajreg.record.store import TrajectoryStore
from trajreg.run import analysis
from trajreg.run.figures import write_figures
from trajreg.run.rundir import atomic_dir, read_json, require_run_dir, write_json, write_parquet
from trajreg.train.config import RunConfig, load_config
from trajreg.train.data import Dataset, load_data
from trajreg.train.loop import (
    TrainLog,
    batches,
    build,
    evaluate,
    full_loss,
    minibatch_loss,
    require_device,
    train,
)
from trajreg.train.models import n_params


def versions() -> dict[str, str]:
    from trajreg import __version__

    return {"trajreg": __version__, "torch": str(torch.__version__)}


def default_out(config_path: str | Path | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state (parameters and buffers): final_state.pt."""
    return {name: v.detach().cpu().clone() for name, v in model.state_dict().items()}


def load_flat(model: torch.nn.Module, x: np.ndarray | torch.Tensor) -> None:
    """Copy a flat parameter vector into ``model`` (parameter order of ``build``)."""
    set_flat_params([p for p in model.parameters() if p.requires_grad], x)


def reference_step(log: TrainLog, reference: str) -> int:
    """k such that x* = x_k: the end (final), the epoch end with the lowest full loss
    (best), or the last iterate before a diverging step."""
    if log.diverged_step is not None:
        return max(log.steps - 1, 0)
    if reference == "best":
        finite = [(f, j) for j, f in enumerate(log.full_loss[1:]) if np.isfinite(f)]
        if finite:
            return log.epoch_ends[min(finite)[1]]
    return log.steps


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.view(torch.uint8), b.view(torch.uint8))


@torch.no_grad()
def _losses_at(cfg, data: Dataset, model: torch.nn.Module, steps: int) -> list[float]:
    out = []
    for step, _, idx in batches(cfg, data):
        if step >= steps:
            break
        out.append(minibatch_loss(cfg, model, data, idx, step).item())
    return out


def _f_star(cfg, data, log: TrainLog, k: int, star: torch.nn.Module) -> float:
    if k in log.epoch_ends:
        return log.full_loss[log.epoch_ends.index(k) + 1]
    if k == 0:
        return log.full_loss[0]
    return full_loss(cfg, data=data, model=star)


def stream_quantities(store: TrajectoryStore, T: int, x_star: np.ndarray) -> dict:
    """D_0..D_T, a, s and eta of the first T stored steps against ``x_star``, streamed in
    ~8 MiB float64 blocks: the computation holds a few temporaries of block size, so
    memory stays O(d) and the blocks stay cache-friendly."""
    from trajreg.principle import trajectory_quantities

    if store.rows < T + 1:
        raise RuntimeError(f"trajectory holds {store.rows} iterates, the run took {T} steps")
    lrs = store.lrs[:T]
    D, a, s = [], [], []
    block_rows = max(1, min(256, (8 << 20) // (8 * store.d)))
    for t0, xs in store.blocks(T, block_rows=block_rows):
        q = trajectory_quantities(xs, lrs[t0 : t0 + len(xs) - 1], x_star)
        D.extend(q.D[:-1])
        a.extend(q.a)
        s.extend(q.s)
    D.append(float(np.sum((store.row(T).astype(np.float64) - x_star) ** 2)))
    return {"D": np.asarray(D), "a": np.asarray(a), "s": np.asarray(s), "lr": lrs}


def measure_store(cfg: RunConfig, data: Dataset, store: TrajectoryStore, log: TrainLog,
                  trained: torch.nn.Module, k: int) -> dict:
    """Per-step quantities of every step against x* = x_k, from the stored trajectory."""
    T = log.steps
    if store.rows != T + 1:
        raise RuntimeError(f"trajectory holds {store.rows} iterates, the run took {T} steps")
    x_star = store.row(k)
    star = copy.deepcopy(trained)  # the trained model's buffers, x* as parameters
    load_flat(star, x_star)
    return {**stream_quantities(store, T, x_star), "loss_star": _losses_at(cfg, data, star, T),
            "f_star": _f_star(cfg, data, log, k, star)}


def measure_replay(cfg: RunConfig, data: Dataset, log: TrainLog, final_state: dict,
                   k: int, progress: bool | None = None) -> dict:
    """Replay the run against x* = x_k; prove it reproduced the run bit for bit."""
    T = log.steps
    if k == T:
        model, _, _ = build(cfg, data)
        model.load_state_dict(final_state)
        star = model
    else:  # x_k is not stored: train again up to step k to get it
        star, opt, sched = build(cfg, data)
        train(cfg, data, star, opt, sched, max_steps=k, eval_full=False, desc="to x*",
              progress=progress)
    x_star = flat_params([p for p in star.parameters() if p.requires_grad]).cpu()
    model, opt, sched = build(cfg, data)
    star_copy = copy.deepcopy(star)  # train-mode forwards there must not touch ``star``
    with Recorder(opt, mode="replay", x_star=x_star) as rec:
        replay = train(cfg, data, model, opt, sched, max_steps=T, star_model=star_copy,
                       eval_full=False, desc="replay", progress=progress)
    for t, (u, v) in enumerate(zip(replay.loss, log.loss, strict=False)):
        if u != v:
            raise ReplayMismatch(f"replay departed from the recorded run at step {t}: "
                                 f"loss {u!r} != recorded {v!r}")
    x_end = flat_params(optimizer_params(opt)).cpu()
    recorded = torch.cat([final_state[n].reshape(-1) for n, p in model.named_parameters()
                          if p.requires_grad])
    if replay.steps != T or not _same_bits(x_end, recorded):
        raise ReplayMismatch("replay did not reproduce the recorded final parameters "
                             "bit for bit; the run is not deterministic on this machine")
    q = rec.stream.compute()
    if k < T and q["D"][k] != 0.0:
        raise ReplayMismatch(f"replay did not pass through x* = x_{k}")
    D = np.append(q["D"], float(torch.sum((x_end.double() - x_star.double()) ** 2)))
    return {"D": D, "a": q["a"], "s": q["s"], "lr": q["lr"], "loss_star": replay.loss_star,
            "f_star": _f_star(cfg, data, log, k, star)}


def _log_from_run(run_dir: Path, table: pd.DataFrame, summary: dict) -> TrainLog:
    return TrainLog(loss=table["loss"].tolist(), epoch=table["epoch"].tolist(),
                    lr=table["lr"].tolist(), full_loss=summary["full_loss"],
                    epoch_ends=summary["epoch_ends"], diverged_step=summary["diverged_step"])


def write_analysis(run_dir: Path, cfg: RunConfig, log: TrainLog, measured: dict | None,
                   k: int, options: analysis.AnalysisOptions, n: int, task: str,
                   evaluation: dict, figures: bool = True, tensorboard: bool = False,
                   extra: dict | None = None) -> dict:
    """Analyse the measured steps and write metrics.parquet, figures (and TensorBoard
    events) and summary.json (last) into ``run_dir``. ``extra`` joins the summary.
    Shared by ``run``, ``analyze`` and the integrations' ``RegularitySession``."""
    T = log.steps
    if measured is None:  # record mode off: losses only
        nan = np.full(T, np.nan)
        measured = {"D": np.append(nan, np.nan), "a": nan, "s": nan, "lr": log.lr,
                    "loss_star": nan, "f_star": np.nan}
    table = analysis.step_table(epoch=log.epoch, lr=measured["lr"], loss=log.loss,
                                loss_star=measured["loss_star"], D=measured["D"],
                                a=measured["a"], s=measured["s"], epoch_ends=log.epoch_ends,
                                full_loss=log.full_loss, delta=options.delta)
    if cfg.record.mode == "off":
        summary = {"n_steps": T, **analysis.speed_summary(log.full_loss, log.epoch_ends,
                                                           options.loss_threshold)}
    else:
        summary = analysis.summarize(table, full_loss=log.full_loss, epoch_ends=log.epoch_ends,
                                     reference_step=k, f_star=measured["f_star"],
                                     options=options)
    summary.update({
        "task": task,
        "evaluation": evaluation,
        "record_mode": cfg.record.mode, "reference": cfg.analysis.reference, "n_params": n,
        "diverged": log.diverged_step is not None, "diverged_step": log.diverged_step,
        **(extra or {}),
    })
    write_parquet(run_dir / "metrics.parquet", table)
    if figures and cfg.record.mode != "off":
        write_figures(run_dir, table, summary)
    if tensorboard and cfg.record.mode != "off":
        from trajreg.run.tensorboard import write_tensorboard

        write_tensorboard(run_dir, table, summary)
    write_json(run_dir / "summary.json", summary)
    return summary


def run(cfg: RunConfig, out: str | Path, *, figures: bool = True, progress: bool | None = None,
        on_epoch: Callable[[int], None] | None = None,
        tensorboard: bool = False) -> tuple[Path, dict]:
    """Train, record, analyse; return the finished run directory and its summary.

    ``figures=False`` skips the PNGs (about 0.3 s a run, see the benchmark;
    ``trajreg analyze`` draws them later). ``progress`` shows tqdm bars (None: only on a terminal);
    ``on_epoch(epoch)`` is called after each training epoch. ``tensorboard`` mirrors
    the per-step quantities and gamma per epoch to ``tensorboard/`` in the run directory.
    """
    out = Path(out)
    require_device(cfg.train.device)
    if tensorboard:
        from trajreg.run.tensorboard import require_tensorboard

        require_tensorboard()
    data = load_data(cfg.data)
    with atomic_dir(out) as tmp:
        config = {**dataclasses.asdict(cfg), "versions": versions()}
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        model, opt, sched = build(cfg, data)
        mode = cfg.record.mode
        recorder = None
        if mode == "store":
            capacity = cfg.train.epochs * (len(data.x_train) // cfg.data.batch_size) + 1
            recorder = Recorder(opt, tmp / "trajectory", mode="store", capacity=capacity)
        log = train(cfg, data, model, opt, sched, progress=progress, on_epoch=on_epoch)
        if recorder is not None:
            recorder.close()
        final_state = cpu_state(model)
        torch.save(final_state, tmp / "final_state.pt")
        k = reference_step(log, cfg.analysis.reference)
        if mode == "store":
            measured = measure_store(cfg, data, TrajectoryStore(tmp / "trajectory"), log,
                                     model, k)
        elif mode == "replay":
            measured = measure_replay(cfg, data, log, final_state, k, progress)
        else:
            measured = None
        options = analysis.AnalysisOptions.from_config(cfg.analysis)
        evaluation = evaluate(cfg, model, data)
        summary = write_analysis(tmp, cfg, log, measured, k, options, n_params(model),
                                 data.task, evaluation, figures, tensorboard)
    return out, summary


def load_run_config(run_dir: Path) -> RunConfig:
    """The run's config; for a run recorded by an integration (``external`` in its
    config.yaml), a RunConfig holding just its analysis options."""
    raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    raw.pop("versions", None)
    if "external" in raw:
        return external_config(raw.get("analysis", {}))
    return load_config(raw)


def external_config(analysis_options: dict) -> RunConfig:
    """The RunConfig of a run trained by other code (an integration): its analysis
    options; the training sections keep their defaults and are not used."""
    return load_config({"analysis": analysis_options, "record": {"mode": "store"}})


def analyze(run_dir: str | Path, *, reference: str | None = None, eps: list[float] | None = None,
            delta: float | None = None, window: tuple[int, int] | None = None) -> dict:
    """Recompute the analysis of a finished run with other options, without retraining.

    Another reference point re-measures the steps: from the stored trajectory in
    store mode, by a verified replay in replay mode.
    """
    run_dir = require_run_dir(Path(run_dir))
    cfg = load_run_config(run_dir)
    if cfg.record.mode == "off":
        raise UserError(f"{run_dir} was trained with record.mode off: nothing to analyse")
    table = pd.read_parquet(run_dir / "metrics.parquet")
    old = read_json(run_dir / "summary.json")
    log = _log_from_run(run_dir, table, old)
    if window is not None and not 0 <= window[0] < window[1] <= len(table):
        raise UserError(f"--window {window[0]}:{window[1]} is not inside the run's "
                        f"{len(table)} steps")
    if reference is not None:
        cfg.analysis.reference = reference
    if eps is not None:
        cfg.analysis.eps = list(eps)
    if delta is not None:
        cfg.analysis.delta = delta
    cfg.validate()
    k = reference_step(log, cfg.analysis.reference)
    if k != old["reference_step"] and "source" in old:
        raise UserError(f"{run_dir} was recorded by the {old['source']} integration: only "
                        "--reference final (the end of its trajectory) can be analysed")
    if k == old["reference_step"]:
        measured = {"D": np.append(table["D"].to_numpy(), np.nan), "a": table["a"].to_numpy(),
                    "s": table["s"].to_numpy(), "lr": table["lr"].to_numpy(),
                    "loss_star": table["loss_star"].to_numpy(), "f_star": old["f_star"]}
    else:
        data = load_data(cfg.data)
        final_state = torch.load(run_dir / "final_state.pt")
        if cfg.record.mode == "store":
            model, _, _ = build(cfg, data)
            model.load_state_dict(final_state)
            measured = measure_store(cfg, data, TrajectoryStore(run_dir / "trajectory"), log,
                                     model, k)
        else:
            measured = measure_replay(cfg, data, log, final_state, k)
    options = analysis.AnalysisOptions.from_config(cfg.analysis, window=window)
    return write_analysis(run_dir, cfg, log, measured, k, options, old["n_params"],
                          old["task"], old["evaluation"],
                          extra={key: old[key] for key in ("source", "loss_check") if key in old})
