"""One run end to end: train, record, measure, analyse, write the run directory.

The run directory's layout is ``trajreg.run.rundir``'s; what is measured is the
record mode's (``trajreg.record.modes``): this module trains with the reference
loop and gives the mode a ``RunContext`` to evaluate losses with.
"""

from __future__ import annotations

import copy
import datetime
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trajreg.errors import ReplayMismatch, UserError
from trajreg.record import curvature
from trajreg.record.geometry import endpoint_summary, interpolate
from trajreg.record.measured import Measured
from trajreg.record.modes import RecordMode, get_mode
from trajreg.record.modes.replay import ReplayMode
from trajreg.record.recorder import Recorder, flat_params, optimizer_params, set_flat_params
from trajreg.run import analysis, rundir
from trajreg.run.progress import phase
from trajreg.run.rundir import atomic_dir
from trajreg.run.summary import Summary
from trajreg.run.trackers import Tracker, attach, mirror, require_trackers, tracker_names
from trajreg.train.config import RunConfig
from trajreg.train.data import Dataset, load_data
from trajreg.train.loop import (
    TrainLog,
    batches,
    build,
    evaluate,
    full_loss,
    minibatch_loss,
    require_device,
    steps_per_epoch,
    total_steps,
    train,
)
from trajreg.train.models import n_params
from trajreg.train.optim import trained_parameters
from trajreg.train.size import check_run_disk, check_run_size


def default_out(config_path: str | Path | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def load_flat(cfg: RunConfig, model: torch.nn.Module, x: np.ndarray | torch.Tensor) -> None:
    """Copy a flat parameter vector (a row of the trajectory) into ``model``, in the
    optimizer's parameter order (``trained_parameters``: with optim.decay_exclude not
    ``model.parameters()``'s)."""
    set_flat_params(trained_parameters(cfg.optim, model), x)


def reference_step(log: TrainLog, reference: str) -> int:
    """k such that x* = x_k: the end (final), the epoch end with the lowest full loss
    (best), or, for a diverged run, the last iterate before the diverging step."""
    if log.diverged_step is not None:
        return max(log.steps - 1, 0)
    if reference == "best":
        finite = [(f, j) for j, f in enumerate(log.full_loss[1:]) if np.isfinite(f)]
        if finite:
            return log.epoch_ends[min(finite)[1]]
    return log.steps


def last_finite_epoch_end(log: TrainLog) -> int:
    """The last epoch end with a finite full loss (0: none), the fallback reference of
    a diverged run whose last iterate has a non-finite full loss."""
    ends = [e for e, f in zip(log.epoch_ends, log.full_loss[1:], strict=False)
            if np.isfinite(f) and e <= log.steps]
    return ends[-1] if ends else 0


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.view(torch.uint8), b.view(torch.uint8))


@contextmanager
def running_statistics_frozen(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block, batch norm in training mode normalises with each batch's own
    statistics, as it does in training, and updates no running statistics (the same
    outputs bit for bit)."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class RunContext:
    """``MeasureContext`` of the reference loop: losses of step t are recomputed from the
    run's seed (the same minibatch, mode and random state as in training) on a copy of
    the trained model, so no batch-norm statistics leak into it."""

    def __init__(self, cfg: RunConfig, data: Dataset, log: TrainLog, model: torch.nn.Module,
                 final_state: dict, directory: Path, progress: bool | None = None) -> None:
        self.cfg, self.data, self.log = cfg, data, log
        self.model, self.final_state = model, final_state
        self.directory, self.steps, self.progress = Path(directory), log.steps, progress
        self._star: torch.nn.Module | None = None
        self._walk: tuple[int, torch.Tensor | None, Iterator] | None = None  # step_loss's
        # measure evaluates the interpolation from x_0 to x* (record.interpolation)
        self.mli = cfg.record.interpolation

    @property
    def star(self) -> torch.nn.Module:
        """The evaluation copy of the trained model (created on first use)."""
        if self._star is None:
            self._star = copy.deepcopy(self.model)
        return self._star

    def load(self, x: np.ndarray) -> None:
        load_flat(self.cfg, self.star, x)

    @torch.inference_mode()  # forward passes only: no autograd bookkeeping (about 15% less)
    def step_losses(self, steps: Sequence[int]) -> np.ndarray:
        """l_t at the loaded point for each step t. Batch norm normalises with each
        minibatch's statistics, as in training, without updating the copy's running ones
        (the same values bit for bit, 4% faster on the small CNN): F(x*) in eval mode
        after it sees the trained model's buffers, however many steps were evaluated."""
        wanted = set(int(t) for t in steps)
        out = {}
        last = max(wanted, default=-1)
        with running_statistics_frozen(self.star):
            for step, _, idx in batches(self.cfg, self.data):
                if step > last:
                    break
                if step in wanted:
                    out[step] = minibatch_loss(self.cfg, self.star, self.data, idx, step).item()
        return np.asarray([out[int(t)] for t in steps], dtype=np.float64)

    def curvature_parameters(self) -> list[torch.Tensor]:
        """The evaluation copy's parameters in the flat order (``record.curvature``)."""
        return list(trained_parameters(self.cfg.optim, self.star))

    def step_batch(self, t: int) -> torch.Tensor:
        """Step t's minibatch (indices into the training set)."""
        return self._indices(t)

    def step_loss(self, t: int) -> torch.Tensor:
        """l_t at the loaded parameters, with a graph (``record.curvature``): step t's
        minibatch, mode and random state, as ``step_losses``."""
        with running_statistics_frozen(self.star):
            return minibatch_loss(self.cfg, self.star, self.data, self._indices(t), t)

    def _indices(self, t: int) -> torch.Tensor:
        """Step t's minibatch: the run's batches walked on from the step asked last, from
        the start only for an earlier step. The curvature asks for its rows in order, about
        ten times each (the critical step's forward passes): a walk from the start each
        time, 4.7 ms at step 3000 of the small CNN, cost more than the measurement (36 ms
        a row)."""
        if self._walk is None or self._walk[0] > t:
            self._walk = (-1, None, batches(self.cfg, self.data))
        at, idx, walk = self._walk
        while at < t:
            step = next(walk, None)
            if step is None:
                self._walk = None
                raise ValueError(f"no step {t} in the run")
            at, _, idx = step
        self._walk = (at, idx, walk)
        assert idx is not None
        return idx

    def f_star(self, k: int) -> float:
        log = self.log
        if k in log.epoch_ends:
            return log.full_loss[log.epoch_ends.index(k) + 1]
        if k == 0:
            return log.full_loss[0]
        return self.full_loss_of(self.star)

    def full_loss_of(self, model: torch.nn.Module) -> float:
        """F of ``model`` evaluated as training evaluated F_k (``full_loss``); a
        distributed run's context evaluates it as its ranks did."""
        return full_loss(self.cfg, data=self.data, model=model)

    def replay(self, k: int) -> Measured:
        return measure_replay(self.cfg, self.data, self.log, self.final_state, k, self.progress)

    @torch.inference_mode()
    def interpolated_losses(self, alphas: Sequence[float], x0: np.ndarray,
                            x_star: np.ndarray) -> np.ndarray:
        """F at (1 - alpha) x0 + alpha x* for each alpha, evaluated as F_k is (``full_loss``:
        eval mode, the whole training set). Batch-norm running statistics are
        interpolated the same way between x_0's (rebuilt from the run seed by ``build``)
        and the trained model's; integer buffers (num_batches_tracked) stay the trained
        model's. Both ends are exact: alpha 0 is F_0's model and alpha 1 the trained one.
        Where the log already holds F of that very model (F_0 when x0 is the initial
        iterate; F of the last epoch end when x* is the trained model's parameters), that
        value is taken instead of evaluating it again: the same computation on the same
        state, so the same bits, two fewer passes over the training set."""
        initial, _, _ = build(self.cfg, self.data)  # x_0 and its buffers, from the seed
        start = dict(initial.named_buffers())
        model = copy.deepcopy(self.model)  # leaves the trained model and ``star`` alone
        params: list[torch.Tensor] = list(trained_parameters(self.cfg.optim, model))
        x0_t, x_star_t = torch.from_numpy(np.array(x0)), torch.from_numpy(np.array(x_star))
        end = {name: b.detach().clone() for name, b in model.named_buffers()}
        known = self._logged_ends(initial, params, x0_t, x_star_t)
        out = []
        for alpha in alphas:
            if float(alpha) in known:
                out.append(known[float(alpha)])
                continue
            set_flat_params(params, interpolate(alpha, x0_t, x_star_t).to(params[0].dtype))
            for name, buf in model.named_buffers():
                if buf.is_floating_point() and name in start:
                    buf.copy_(interpolate(alpha, start[name], end[name]).to(buf.dtype))
            out.append(self.full_loss_of(model))
        return np.asarray(out, dtype=np.float64)

    def _logged_ends(self, initial: torch.nn.Module, params: list[torch.Tensor],
                     x0: torch.Tensor, x_star: torch.Tensor) -> dict[float, float]:
        """{0.0: F_0, 1.0: F_T} where the log's value is F of the model alpha 0 (1) gives:
        alpha 0 is ``initial``'s parameters and buffers when x0 is its parameters; alpha 1
        the trained model's when x* is its parameters and F_T was logged at the end of the
        run (the last epoch end is the last step, not diverged)."""
        log, known = self.log, {}

        def same(x: torch.Tensor, ps: list[torch.Tensor]) -> bool:  # bit for bit
            flat = flat_params(ps).detach().cpu()
            return x.shape == flat.shape and torch.equal(x, flat.to(x.dtype))

        if log.full_loss and same(x0, list(trained_parameters(self.cfg.optim, initial))):
            known[0.0] = log.full_loss[0]
        if (log.diverged_step is None and log.epoch_ends and log.epoch_ends[-1] == log.steps
                and len(log.full_loss) == len(log.epoch_ends) + 1
                and same(x_star, params)):
            known[1.0] = log.full_loss[-1]
        return known


def measure(mode: RecordMode, ctx: RunContext, reference: str
            ) -> tuple[Measured | None, Measured | None]:
    """The mode's measurement against the reference, and against the best epoch end
    when the mode can do that without retraining (the sensitivity analysis)."""
    k = reference_step(ctx.log, reference)
    measured = mode.measure(ctx, k)
    if (measured is not None and ctx.log.diverged_step is not None
            and not np.isfinite(measured.f_star) and k > 0):
        measured = mode.measure(ctx, last_finite_epoch_end(ctx.log))
    best = None
    if measured is not None and mode.can_reanalyse("best"):
        k_best = reference_step(ctx.log, "best")
        ctx.mli = False  # the interpolation is the reference's only
        best = measured if k_best == k else mode.measure(ctx, k_best)
    return measured, best


def measure_replay(cfg: RunConfig, data: Dataset, log: TrainLog, final_state: dict,
                   k: int, progress: bool | None = None) -> Measured:
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
    x_star = flat_params(list(trained_parameters(cfg.optim, star))).cpu()
    model, opt, sched = build(cfg, data)
    x0 = flat_params(optimizer_params(opt)).cpu().numpy()  # rebuilt from the seed
    star_copy = copy.deepcopy(star)  # train-mode forwards there must not touch ``star``
    mode = ReplayMode.from_config(cfg.record, cfg.seed)
    with Recorder(opt, mode=mode, x_star=x_star) as rec:
        replay = train(cfg, data, model, opt, sched, max_steps=T, star_model=star_copy,
                       eval_full=False, desc="replay", progress=progress)
    for t, (u, v) in enumerate(zip(replay.loss, log.loss, strict=False)):
        if u != v:
            raise ReplayMismatch(f"replay departed from the recorded run at step {t}: "
                                 f"loss {u!r} != recorded {v!r}")
    x_end = flat_params(optimizer_params(opt)).cpu()
    names = {id(p): n for n, p in model.named_parameters()}
    recorded = torch.cat([final_state[names[id(p)]].reshape(-1)
                          for p in trained_parameters(cfg.optim, model)])
    if replay.steps != T or not _same_bits(x_end, recorded):
        raise ReplayMismatch("replay did not reproduce the recorded final parameters "
                             "bit for bit; the run is not deterministic on this machine")
    assert rec.stream is not None
    q = rec.stream.compute()
    if k < T and q["D"][k] != 0.0:
        raise ReplayMismatch(f"replay did not pass through x* = x_{k}")
    # F(x*) and the interpolation need only the model and the data, no run directory
    ctx = RunContext(cfg, data, log, star, final_state, Path("."))
    columns: dict[str, np.ndarray] = {key: q[key] for key in ("g_dot", "g_norm2") if key in q}
    return Measured(steps=np.arange(T), D=q["D"], a=q["a"], s=q["s"], lr=q["lr"],
                    loss_star=np.asarray(replay.loss_star), f_star=ctx.f_star(k),
                    reference_step=k, columns=columns,
                    summary=endpoint_summary(ctx, k, x0, x_star.numpy(),
                                             q["lr"] * np.sqrt(q["s"])))


def measure_curvature(ctx: RunContext, directory: Path, options: Any, seed: int,
                      model: torch.nn.Module,
                      ranks: curvature.RankGroup = curvature.ONE_PROCESS
                      ) -> tuple[dict[int, curvature.CurvatureStep], float]:
    """``record.curvature``: the kept rows under ``directory`` measured, and lambda_max at
    the trained ``model`` (x_T, the last step's minibatch). ``ranks``: a DDP run's, every
    rank calling this with its own context (``curvature.measure_rows``)."""
    T = ctx.log.steps
    x_end = flat_params(list(trained_parameters(ctx.cfg.optim, model))).detach().cpu().numpy()
    return curvature.measure_rows(ctx, directory, options, seed, x_star=x_end,
                                  last_step=T - 1 if T else None, ranks=ranks)


def put_curvature(measured: list[Measured], found: dict[int, curvature.CurvatureStep],
                  at_end: float, T: int) -> None:
    """The curvature as columns of each measurement, and lambda_max at x_T in its summary
    when x_T is its reference."""
    for m in measured:
        m.columns.update(curvature.columns(m.steps, found))
        m.summary["curvature"] = _at_end(at_end, m.reference_step == T)


def _carry_curvature(table: pd.DataFrame, m: Measured, old: dict | None, steps: int) -> None:
    """The curvature columns of a run's metrics onto a new measurement of it (another
    reference point: the curvature at x_t does not depend on x*; lambda_max at x* is
    known only for x* = x_T, the reference it was measured at)."""
    by_step = table.set_index("step")
    for name in curvature.COLUMNS:
        m.columns[name] = by_step[name].reindex(m.steps).to_numpy(dtype=np.float64)
    m.summary["curvature"] = _at_end((old or {}).get("lambda_max_end"),
                                     m.reference_step == steps)


def _at_end(value: float | None, star_is_end: bool) -> dict[str, float | None]:
    """lambda_max at x_T on the last step's minibatch, and at x* when x* is x_T."""
    return {"lambda_max_end": value, "lambda_max_star": value if star_is_end else None}


def add_curvature(ctx: RunContext, directory: Path, options: Any, seed: int,
                  model: torch.nn.Module, measured: list[Measured]) -> None:
    """``record.curvature`` of a run trained in this process: ``measure_curvature``,
    then ``put_curvature``."""
    found, at_end = measure_curvature(ctx, directory, options, seed, model)
    put_curvature(measured, found, at_end, ctx.log.steps)


def _log_from_run(run_dir: Path, table: pd.DataFrame, summary: Summary) -> TrainLog:
    """The training log of a finished run: from its per-step log when the metrics hold
    only the measured steps of a sample, else from the metrics."""
    path = Path(run_dir) / rundir.TRAINLOG
    src = pd.read_parquet(path) if path.is_file() else table
    return TrainLog(loss=src["loss"].tolist(), epoch=src["epoch"].tolist(),
                    lr=src["lr"].tolist(), full_loss=list(summary.full_loss),
                    epoch_ends=list(summary.epoch_ends), diverged_step=summary.diverged_step)


def write_analysis(run_dir: Path, log: TrainLog, measured: Measured | None, *, mode: str,
                   reference: str, options: analysis.AnalysisOptions,
                   facts: analysis.RunFacts, best: Measured | None = None,
                   figures: bool = True, tensorboard: bool = False,
                   words: Mapping[str, str] | None = None) -> Summary:
    """Analyse the measured steps and write the outputs (metrics.parquet, figures,
    TensorBoard events, summary.json last) into ``run_dir``. Shared by ``run``,
    ``analyze`` and the integrations' ``RegularitySession``. ``words``: the record mode's
    ``words`` (``RecordMode.plan``), how the analysis' warnings name its options."""
    table, summary = analysis.analyse(log, measured, mode=mode, reference=reference,
                                      options=options, facts=facts, best=best, words=words)
    if measured is not None and not measured.every_step:
        rundir.write_trainlog(run_dir, log)
    rundir.write_outputs(run_dir, table, summary, figures=figures, tensorboard=tensorboard)
    return summary


def _saving_checkpoints(cfg: RunConfig, data: Dataset, model: torch.nn.Module, run_dir: Path,
                        on_epoch: Callable[[int], None] | None) -> Callable[[int], None]:
    """``train.checkpoints``: the model's state at step 0 now and after every epoch
    (``checkpoints/step-NNNNNNNN.pt``); then ``on_epoch``."""
    folder = run_dir / rundir.CHECKPOINTS
    folder.mkdir()
    per_epoch = steps_per_epoch(cfg, data)

    def save(step: int) -> None:
        rundir.write_state(folder / f"step-{step:08d}.pt", model)

    save(0)

    def after(epoch: int) -> None:
        save(epoch * per_epoch)  # epochs count from 1
        if on_epoch is not None:
            on_epoch(epoch)
    return after


def run(cfg: RunConfig, out: str | Path, *, figures: bool = True, progress: bool | None = None,
        on_epoch: Callable[[int], None] | None = None, tensorboard: bool = False,
        trackers: Sequence[Tracker] = ()) -> tuple[Path, Summary]:
    """Train, record, analyse; return the finished run directory and its summary.

    ``figures=False`` skips the PNGs (about 0.3 s a run, see the benchmark;
    ``trajreg analyze`` draws them later). ``progress`` shows tqdm bars (None: only on a terminal);
    ``on_epoch(epoch)`` is called after each training epoch. ``tensorboard`` mirrors
    the per-step quantities and gamma per epoch to ``tensorboard/`` in the run directory;
    ``trackers`` (``"tensorboard"``, ``"wandb"``, ``"mlflow"``) to those too, W&B and MLflow
    once the run directory is complete (``trajreg.run.trackers``).
    One process only: a config with ``train.distributed`` is a ``ValueError`` here;
    ``trajreg.run`` (``trajreg.distributed.run``) runs any config.
    """
    if cfg.train.distributed is not None:  # a layer above this one launches the ranks
        raise ValueError("runner.run trains in this process: a config with "
                         "train.distributed runs through trajreg.run or "
                         "trajreg.distributed.run")
    out = Path(out)
    check_run_disk(cfg, out)  # what the record mode writes fits the output's disk
    require_device(cfg.train.device)
    check_run_size(cfg)  # refuse a run that cannot fit before loading anything
    names = tracker_names(trackers, tensorboard)
    require_trackers(names)
    runs = attach(names)
    data = load_data(cfg.data, max_memory_gb=cfg.train.max_memory_gb,
                     block_size=getattr(cfg.model, "block_size", None))
    mode = get_mode(cfg.record.mode).from_config(cfg.record, cfg.seed)
    mode.plan(total_steps(cfg, data), cfg.analysis)
    with atomic_dir(out) as tmp:
        rundir.write_config(tmp, cfg.to_dict())
        rundir.write_data_facts(tmp, data)
        model, opt, sched = build(cfg, data)
        capacity = total_steps(cfg, data) + 1
        curvature = cfg.record.curvature
        recorder = Recorder(opt, tmp / rundir.TRAJECTORY, mode=mode, capacity=capacity,
                            curvature=None if curvature is None else (curvature.rate, cfg.seed))
        try:
            phase(f"training {cfg.train.epochs} epochs ({total_steps(cfg, data)} steps)",
                  progress)
            if cfg.train.checkpoints:
                on_epoch = _saving_checkpoints(cfg, data, model, tmp, on_epoch)
            log = train(cfg, data, model, opt, sched, progress=progress, on_epoch=on_epoch)
        finally:
            recorder.close()
        final_state = rundir.write_final_state(tmp, model)
        ctx = RunContext(cfg, data, log, model, final_state, tmp, progress)
        phase(f"measuring ({mode.name})", progress)
        measured, best = measure(mode, ctx, cfg.analysis.reference)
        if curvature is not None and measured is not None:
            phase("measuring curvature", progress)
            add_curvature(ctx, tmp / rundir.TRAJECTORY, curvature, cfg.seed, model,
                          [m for m in (measured, best) if m is not None])
        facts = analysis.RunFacts(n_params=n_params(model), task=data.task,
                                  evaluation=evaluate(cfg, model, data))
        phase(f"writing {out}", progress)
        summary = write_analysis(tmp, log, measured, mode=mode.name,
                                 reference=cfg.analysis.reference,
                                 options=analysis.AnalysisOptions.from_config(cfg.analysis),
                                 facts=facts, best=best, figures=figures,
                                 tensorboard="tensorboard" in names, words=mode.words)
        if not cfg.record.keep_trajectory:
            rundir.discard_trajectory(tmp)
    mirror(out, names, runs)
    return out, summary


def analyze(run_dir: str | Path, *, reference: str | None = None, eps: list[float] | None = None,
            delta: float | None = None, window: tuple[int, int] | None = None,
            progress: bool | None = None) -> Summary:
    """Recompute the analysis of a finished run with other options, without retraining.

    Another reference point re-measures the steps: from the stored trajectory in
    store mode, by a verified replay in replay mode. The run is verified first
    (``rundir.verify_run_dir``: a damaged one is a ``DamagedRun``), and the new
    outputs replace the old all-or-nothing (``rundir.replace_outputs``). ``progress``
    as in ``run`` (phase lines on stderr, bars on a terminal; False: silent).
    """

    phase(f"verifying {run_dir}", progress)
    run_dir = rundir.verify_run_dir(Path(run_dir))
    conf = rundir.read_config(run_dir)
    mode = get_mode(conf.record_mode).from_config(
        conf.run.record if conf.run else None, conf.run.seed if conf.run else 0)
    if not mode.hooks:
        raise UserError(f"{run_dir} was trained with record.mode off: nothing to analyse")
    table = rundir.read_metrics(run_dir)
    old = rundir.read_summary(run_dir)
    log = _log_from_run(run_dir, table, old)
    if window is not None and not 0 <= window[0] < window[1] <= log.steps:
        raise UserError(f"--window {window[0]}:{window[1]} is not inside the run's "
                        f"{log.steps} steps")
    acfg = conf.analysis
    if reference is not None:
        acfg.reference = reference
    if eps is not None:
        acfg.eps = list(eps)
    if delta is not None:
        acfg.delta = delta
    acfg.validate()
    k = reference_step(log, acfg.reference)
    if k != old.reference_step and old.source is not None:
        raise UserError(f"{run_dir} was recorded by the {old.source} integration: only "
                        "--reference final (the end of its trajectory) can be analysed")
    kept = rundir.kept_trajectory(conf)
    if k != old.reference_step and not kept:
        raise UserError(f"{run_dir} did not keep its trajectory (record.keep_trajectory: "
                        f"false): only its own reference (step {old.reference_step}) can be "
                        "analysed again")
    measured = best = ctx = None
    if k == old.reference_step:
        measured = Measured.from_table(
            table, f_star=math.nan if old.f_star is None else old.f_star, reference_step=k,
            derived=[*analysis.METRIC_COLUMNS, *analysis.GEOMETRY_COLUMNS],
            # the path, the interpolation and the curvature at x* depend on x* only (and
            # a session's failed curvature measurement stays said)
            summary={key: getattr(old, key) for key in ("path_ratio", "mli")
                     if getattr(old, key) is not None}
            | ({"curvature": {**_at_end(old.curvature.get("lambda_max_end"), k == log.steps),
                              **{key: old.curvature[key] for key in ("error",)
                                 if key in old.curvature}}}
               if old.curvature else {}))
    # a run trained by other code (an integration) has no config to re-measure with: its
    # sensitivity analysis has no best reference
    k_best = (reference_step(log, "best")
              if mode.can_reanalyse("best") and kept and conf.run is not None else None)
    if measured is None or k_best not in (None, k):
        cfg = conf.run
        if cfg is None:  # pragma: no cover - integrations refused above
            raise UserError(f"{run_dir}: no training config to re-measure with")
        data = load_data(cfg.data, max_memory_gb=cfg.train.max_memory_gb,
                         block_size=getattr(cfg.model, "block_size", None))
        final_state = rundir.read_final_state(run_dir)
        model, _, _ = build(cfg, data)
        model.load_state_dict(final_state)
        ctx = RunContext(cfg, data, log, model, final_state, run_dir, progress)
        phase(f"measuring ({mode.name}) against x_{k}", progress)
        if measured is None:
            measured = mode.measure(ctx, k)
    if k_best is not None:
        if ctx is not None:
            ctx.mli = False  # the interpolation is the reference's only
        best = measured if k_best == k or ctx is None else mode.measure(ctx, k_best)
    if "lambda_max" in table:  # record.curvature: measured at x_t, whatever x* is
        for m in (measured, best):
            if m is not None and "lambda_max" not in m.columns:
                _carry_curvature(table, m, old.curvature, log.steps)
    options = analysis.AnalysisOptions.from_config(acfg, window=window)
    facts = analysis.RunFacts(n_params=old.n_params, task=old.task, evaluation=old.evaluation,
                              source=old.source, loss_check=old.loss_check,
                              session=old.session)
    phase(f"writing {run_dir}", progress)
    written: list[Summary] = []
    rundir.replace_outputs(run_dir, lambda stage: written.append(write_analysis(
        stage, log, measured, mode=mode.name, reference=acfg.reference, options=options,
        facts=facts, best=best)))
    return written[0]
