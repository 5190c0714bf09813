"""Measure a run that some other code trains: what every integration shares.

A ``RegularitySession`` is told about each micro-batch (its inputs and its loss) by
a framework callback or a hand-written loop; optimizer steps are seen through the
recorder's step hooks, so only real optimizer steps count. A micro-batch belongs to
the first optimizer step taken after its forward pass began (``before_batch``), so
gradient accumulation and closures that run the forward inside ``optimizer.step``
(Lightning) are both attributed correctly. At the end it writes the
run directory that ``trajreg run`` writes, so ``trajreg analyze`` and study reports
read it unchanged.

What is exact and what is not:

- x_t, eta_t and so D_t, a_t, s_t, c_t are exact for every step: the trajectory is
  recorded at the optimizer step (store mode), whatever the framework does around
  it (clipping, accumulation, schedulers, AMP).
- l_t(x_t) and l_t(x*) are both recomputed after training on step t's own
  recorded micro-batches (the mean of their losses, or the sum with
  ``combine="sum"``), in train mode, with the random state (dropout masks) each
  micro-batch saw, at the stored x_t and at x* = x_T (``reference: final``; other
  references need a rerun). BN running statistics are saved and restored around
  it. Recomputing l_t(x_t) proves the reconstruction: ``loss_check`` in
  summary.json counts the steps where it equals, bit for bit, the loss the
  framework computed during training. Batches must be tensors (or nested
  tuples/lists/dicts of them); they are kept in ``batches/`` of the run directory (one
  log, ``trajreg.integrations.batches``).
  A rebuilt loss that differs from the logged one by more than ``loss_rtol`` (relative)
  stops the measurement with ``LossMismatch``: no run directory is written, since every
  b_t of such a run would be wrong.
- F_k, the training loss per epoch, is the framework's running epoch loss: the
  mean of l_t(x_t) over epoch k's steps (F_0 = l_0(x_0)), not the full loss at the
  epoch's end point as in ``trajreg run``. It only matters for the default window. An
  epoch is what ``end_epoch()`` (or ``epoch_steps``) says it is; a loop that never ends
  one is a single epoch. F(x*) and the interpolation's F are the mean loss over a fixed
  evaluation set: the micro-batches of the last measured steps of the last epoch, at
  least ``eval_batches`` of them (whole steps), so their cost is bounded whatever the
  run's length.
- Micro-batches whose gradients are cleared (``zero_grad``, ``p.grad = None``) before an
  optimizer step uses them, as when a GradScaler skips an overflowing step, are dropped
  from the next step's loss (``session.skipped_steps`` in summary.json); a step taken
  with no micro-batch since the previous one has no l_t and is left unmeasured
  (``session.steps_without_batch``).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from trajreg.distributed.ranks import (
    ABORT,
    CURVATURE,
    DONE,
    LOAD,
    LOSSES,
    RankFailed,
    Ranks,
    full_state,
    reshard,
)
from trajreg.errors import UserError
from trajreg.integrations.measure import LossCheck, LossFn, SessionContext, kept_state
from trajreg.integrations.microbatches import MicroBatches
from trajreg.integrations.writer import SessionRun, StateOnly, write_session_run
from trajreg.record import curvature
from trajreg.record.measured import Measured
from trajreg.record.modes import MODES, RecordMode, get_mode
from trajreg.record.recorder import (
    Recorder,
    flat_params,
    local_part,
    optimizer_params,
    set_flat_params,
    shard_recorder,
)
from trajreg.record.shards import Shard, put_local
from trajreg.run import rundir
from trajreg.run.summary import Summary
from trajreg.run.trackers import (
    Tracker,
    TrackerRuns,
    attach,
    mirror,
    require_trackers,
    tracker_names,
)
from trajreg.train.config import AnalysisConfig, CurvatureConfig

if TYPE_CHECKING:
    from trajreg.record.modes.base import MeasureContext

__all__ = ["EVAL_BATCHES", "LOSS_RTOL", "LossFn", "LossMismatch", "RegularitySession",
           "SessionMisuse", "api_words"]

# A rebuilt loss equals the logged one bit for bit on one machine with deterministic
# kernels; 1e-5 (about 80 float32 ulps) leaves room for non-deterministic GPU reductions
# while a scaled loss (a factor of 2 or more) or another batch is far outside it.
LOSS_RTOL = 1e-5
EVAL_BATCHES = 32  # micro-batches in the evaluation set of F(x*) and the interpolation


def api_words(api: str) -> dict[str, str]:
    """How the record modes' options are spelled through ``api`` (a session or a
    callback), for the modes' warnings (``RecordMode.plan``'s ``words``)."""
    return {"steps": f"{api}(steps=...)",
            "rate": f"{api}(mode=SampleMode(rate=...))",
            "min_steps": f"{api}(mode=SampleMode(min_steps=...))",
            "dim": f"{api}(mode=SketchMode(dim=...))",
            "check_rate": f"{api}(mode=SketchMode(check_rate=...))",
            "check_min_steps": f"{api}(mode=SketchMode(check_min_steps=...))"}


class SessionMisuse(UserError):
    """A session's methods called out of order (before ``start``, after ``finish``,
    twice) or with an optimizer that does not train the model."""


class LossMismatch(UserError):
    """The losses rebuilt from the recorded micro-batches are not the losses the training
    script logged: the measurement would be wrong, so none is written."""


def _notice(message: str) -> None:
    """One line on stderr, for what the user must know but need not act on."""
    print(f"trajreg: {message}", file=sys.stderr, flush=True)


def _replica(optimizer: torch.optim.Optimizer) -> tuple:
    """What every rank of a data-parallel run must share: the number of parameters, a
    fingerprint of x_0 (DDP broadcasts rank 0's parameters when it wraps the model), and
    whether the parameters are sharded (DTensors: FSDP2, tensor parallelism)."""
    params = optimizer_params(optimizer)
    n = int(sum(p.numel() for p in params))
    if any(hasattr(p, "to_local") for p in params):
        return n, "", True
    total = sum(float(p.detach().double().sum()) for p in params)
    return n, float(total).hex(), False


def _check_replicas(every: list[tuple]) -> None:
    """Refuse (on every rank alike) a distributed run that is neither data-parallel
    (every rank holds every parameter) nor FSDP2 on every rank."""
    if len({sharded for _, _, sharded in every}) > 1:
        raise UserError("some ranks' parameters are sharded (DTensor) and others' are not: "
                        "RegularitySession measures DDP and FSDP2 runs")
    if len({(n, fp) for n, fp, _ in every}) > 1:
        sizes = ", ".join(str(n) for n, _, _ in every)
        raise UserError(f"the ranks hold different parameters (sizes {sizes}, or different "
                        "values at the start): RegularitySession measures data-parallel runs "
                        "in which every rank holds the same parameters (DDP)")


class RegularitySession:
    """Record a framework-driven run and write a trajreg run directory at its end.

    Call ``start`` once, then for every micro-batch ``before_batch()`` (before its
    forward pass: the random state it will use is saved) and ``after_batch(batch,
    loss)``; ``end_epoch()`` after each epoch; ``finish(model, loss_fn)`` at the end,
    where ``loss_fn(model, batch)`` recomputes a micro-batch's loss.

    Args:
        out: the run directory to create (must not exist).
        source: who trained the run (lightning, huggingface, plain), for the summary.
        eps: violation fractions for gamma_hat.
        loss_threshold: for steps_to_threshold.
        tensorboard: also mirror the per-step quantities and gamma per epoch to
            ``out/tensorboard`` (needs the tensorboard package).
        trackers: mirror the run to these too: ``"tensorboard"``, ``"wandb"``,
            ``"mlflow"`` (``trajreg.run.trackers``), once its directory is complete, into
            the run the framework or the script has active (a callback's WandbLogger or
            MLFlowLogger, ``wandb.run``, ``mlflow.active_run()`` when ``start`` is
            called), else into a run of their own named after ``out``.
        figures: write the PNG figures.
        combine: a step's loss from its micro-batch losses: their mean, or their sum
            (losses already normalised by the whole step's size).
        lr_group: the param group whose learning rate is eta_t.
        mode: the record mode (docs/record-modes.md): ``store`` (every x_t), ``sample``
            (a random sample of steps, exact; only the kept steps' micro-batches are
            saved) or ``sketch``, by name with its defaults or as a mode instance
            (e.g. ``SampleMode(rate=0.1, seed=1)``). Steps not measured exactly take
            l_t(x_t) from the loss the framework computed.
        timeout: under data-parallel training (``trajreg.distributed.ranks``), the
            seconds a rank waits for the others in one of the session's collectives
            before it fails.
        interpolation: evaluate the session's F on the segment from x_0 to x* (the
            summary's ``mli``: 21 passes over the evaluation set, about ``eval_batches``
            micro-batches); False leaves ``mli`` null.
        steps: the number of optimizer steps the run will take, if known: the one-pass
            modes size their samples from it (a callback passes the framework's own).
        epoch_steps: end an epoch every this many optimizer steps, for a loop without
            epochs (as calling ``end_epoch()`` would); the window rule and gamma per epoch
            use epochs (docs/integrations.md, "Loops without epochs").
        eval_batches: the evaluation set of F(x*) and the interpolation: the micro-batches
            of the last measured steps of the last epoch, whole steps, until there are at
            least this many.
        loss_rtol: the largest relative difference between a rebuilt step loss and the
            logged one that counts as the same loss; beyond it ``finish`` raises
            ``LossMismatch`` and writes nothing.
        curvature: ``record.curvature`` (docs/integrations.md, "Curvature"): a dict of
            ``rate``, ``iterations``, ``tol``, ``critical`` or a ``CurvatureConfig``; at
            a seeded sample of the measured steps (the mode's seed) the sharpness of each
            step's loss, rebuilt from its micro-batches, in metrics.parquet
            (``lambda_max``, ...) and summary.json (``curvature``). Under DDP every rank
            differentiates its part of the step's loss; FSDP2 is refused.

    Under DDP or FSDP2 (torch.distributed initialised with more than one process when
    ``start`` is called) every rank runs the same session: rank 0 alone records the
    trajectory (FSDP2: every rank its shard, into rank 0's directory) and writes
    ``out``; every rank keeps its own micro-batches and random states (rank r > 0 in its
    own ``.NAME.partial-*`` directory beside ``out``, removed at the end), rebuilds l_t
    on them, and the ranks' losses are added (``rank_combine``: their mean, or their
    sum for losses normalised by the global batch's size). See
    ``trajreg.distributed.ranks``.
    """

    def __init__(self, out: str | Path, *, source: str, eps: tuple[float, ...] = (0.0, 0.05),
                 loss_threshold: float = 0.1, tensorboard: bool = False, figures: bool = True,
                 trackers: Sequence[Tracker] = (), combine: str = "mean", lr_group: int = 0,
                 mode: str | RecordMode = "store", timeout: float = 1800.0,
                 interpolation: bool = True, steps: int | None = None,
                 epoch_steps: int | None = None, eval_batches: int = EVAL_BATCHES,
                 loss_rtol: float = LOSS_RTOL,
                 curvature: Mapping[str, Any] | CurvatureConfig | None = None) -> None:
        self.out = Path(out)
        if self.out.exists():
            raise UserError(f"output directory already exists: {self.out}")
        if combine not in ("mean", "sum"):
            raise UserError(f"combine: must be 'mean' or 'sum', got {combine!r}")
        self.trackers = tracker_names(trackers, tensorboard)
        require_trackers(self.trackers)
        self.runs = TrackerRuns()  # a callback may name its framework's runs before start
        self.source = source
        self.analysis = AnalysisConfig(eps=[float(e) for e in eps],
                                       loss_threshold=float(loss_threshold))
        try:
            self.analysis.validate()
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if isinstance(mode, str):
            try:
                mode = get_mode(mode).from_config()
            except ValueError as exc:
                raise UserError(str(exc)) from None
        if not mode.keeps_trajectory:
            able = ", ".join(n for n, m in MODES.items() if m.keeps_trajectory)
            raise UserError(f"mode: {mode.name!r} cannot record an integration's run "
                            f"(it keeps no trajectory to measure after training: {able} do)")
        self.curvature = CurvatureConfig.from_option(curvature)
        if self.curvature is not None and not mode.measures:
            raise UserError(f"curvature: mode {mode.name!r} measures nothing to put "
                            "curvature beside")
        for key, value, low in (("steps", steps, 1), ("epoch_steps", epoch_steps, 1),
                                ("eval_batches", eval_batches, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise UserError(f"{key}: must be an integer >= {low}, got {value!r}")
        if not (isinstance(loss_rtol, int | float) and 0 <= loss_rtol < 1):
            raise UserError(f"loss_rtol: must be a number in [0, 1), got {loss_rtol!r}")
        self.expected_steps, self.epoch_steps = steps, epoch_steps
        self.eval_batches, self.loss_rtol = int(eval_batches), float(loss_rtol)
        self.mode = mode
        self.figures = figures
        self.batches: MicroBatches | None = None  # set by start()
        self.combine = combine
        self.lr_group = lr_group
        self.timeout = float(timeout)
        self.interpolation = bool(interpolation)
        self.ranks = Ranks(timeout=self.timeout)  # start(): the process group's, if any
        self.rank_combine = "mean"  # a step's loss from the ranks' losses: mean or sum
        self.shard: Shard | None = None  # FSDP2: this rank's entries of x
        self.tmp: Path | None = None
        self.recorder: Recorder | None = None
        self.step_lrs: list[float] = []  # eta_t of each step taken
        self.epoch_ends: list[int] = []
        self.info: dict[str, Any] = {}
        self._api = "RegularitySession"
        self._state = "new"  # then started, and finished or aborted

    @property
    def combine(self) -> str:
        """A step's loss from its micro-batches' losses: ``mean`` or ``sum`` (a framework
        may find out which only from the first micro-batch)."""
        return self._combine

    @combine.setter
    def combine(self, value: str) -> None:
        self._combine = value
        if self.batches is not None:
            self.batches.combine = value

    # ------------------------------------------------------------------ during training

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              info: dict[str, Any] | None = None, *, steps: float | None = None,
              api: str = "RegularitySession") -> None:
        """Begin recording ``optimizer``'s steps of ``model``. ``steps``: the framework's
        number of optimizer steps, when the session was given none; ``api``: how the
        caller is named in messages about the mode's options."""
        if self._state != "new":
            raise SessionMisuse(f"start() was called on a session that is already "
                                f"{self._state}: a session records one run; make a new "
                                "RegularitySession for another")
        self._state = "started"
        # a framework's count may be unknown: None, -1 or inf
        if (self.expected_steps is None and steps is not None and math.isfinite(steps)
                and steps >= 1):
            self.expected_steps = int(steps)
        self._api = api
        self.ranks = Ranks.detect(self.timeout)  # every rank: a collective
        # a script that dies of an exception (frameworks without an exception hook, a
        # failed rank) leaves no partial directory behind
        atexit.register(self.abort)
        try:
            self._start(model, optimizer, info)
        except BaseException as exc:
            self.abort()
            self.ranks.agree("starting", exc)  # the others raise too; this one re-raises
            raise
        try:
            every = self.ranks.agree("starting", facts=_replica(self.optimizer))
            _check_replicas(every)
            if every[0][2]:
                self._start_shards()
        except BaseException:
            self.abort()
            raise
        if not self.ranks.single:
            self.info["ranks"] = self.ranks.world

    def _start_shards(self) -> None:
        """FSDP2: every rank records its own shard into rank 0's partial directory."""
        ranks = self.ranks
        if not self.mode.shardable:
            raise UserError(f"mode {self.mode.name!r} cannot record sharded (FSDP2) "
                            "parameters")
        leader = Path(ranks.broadcast_object("starting", str(self.tmp)))
        error: BaseException | None = None
        try:
            self.recorder = shard_recorder(self.optimizer, leader / rundir.TRAJECTORY,
                                           mode=self.mode, rank=ranks.rank, world=ranks.world,
                                           lr_group=self.lr_group, capacity=self._capacity())
            self.shard = self.recorder.shard
        except Exception as exc:
            error = exc
        ranks.agree("starting", error)
        self.info["sharded"] = "fsdp2"

    def _start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               info: dict[str, Any] | None) -> None:
        _check_trains(model, optimizer)
        if self.ranks.leader:  # the runs to log into, found while the framework's are open
            self.runs = attach(self.trackers, self.runs)
        if self.curvature is not None and any(hasattr(p, "to_local")
                                              for p in optimizer_params(optimizer)):
            # FSDP2: this torch has no double backward through fully_shard's hooks
            raise UserError(f"{self._api}(curvature=...) is not yet supported with sharded "
                            "(FSDP2, DTensor) parameters: measure curvature under DDP or "
                            "in a single process, or train without curvature")
        # every rank alike, before recording: one-pass modes size their samples from T
        self.mode.plan(self.expected_steps, self.analysis, words=api_words(self._api))
        # under DDP rank r > 0 keeps only its micro-batches there, rank 0 the run
        self.tmp = rundir.partial_dir(self.out)
        self.batches = MicroBatches(self.tmp / "batches", self.combine)
        # frameworks wrap the optimizer (accelerate's AcceleratedOptimizer, ...): the
        # step hooks belong on the torch optimizer that really updates the parameters
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = cast(Any, optimizer).optimizer  # the wrapper's torch optimizer
        self.model, self.optimizer = model, optimizer
        sharded = any(hasattr(p, "to_local") for p in optimizer_params(optimizer))
        # DDP: every rank holds every x_t, rank 0 records; FSDP2: _start_shards
        if self.ranks.leader and not sharded:
            self.recorder = Recorder(optimizer, self.tmp / rundir.TRAJECTORY,
                                     mode=self.mode, lr_group=self.lr_group,
                                     capacity=self._capacity(),
                                     curvature=None if self.curvature is None
                                     else (self.curvature.rate, self.curvature_seed))
        # after the recorder's own hook: the step just taken closes its micro-batches
        self._hook = optimizer.register_step_post_hook(lambda *_: self._step_taken())
        self._lr_hook = optimizer.register_step_pre_hook(lambda *_: self._check_lr())
        if not sharded:  # FSDP2 assigns sharded gradients outside autograd's accumulation
            self.batches.watch_clears(optimizer_params(optimizer))
        self.info = {"source": self.source, "model": type(model).__name__,
                     "optimizer": type(optimizer).__name__,
                     "param_groups": [{k: v for k, v in g.items() if k != "params"
                                       and isinstance(v, int | float | str | bool | tuple)}
                                      for g in optimizer.param_groups],
                     **(info or {})}

    def _require(self, call: str) -> None:
        if self._state != "started":
            when = {"new": "before start()", "finished": "after finish()",
                    "aborted": "after the session was aborted"}[self._state]
            raise SessionMisuse(f"{call} {when}: call start(model, optimizer) once before "
                                "training, before_batch()/after_batch() for every "
                                "micro-batch, finish(model, loss_fn) once after it")

    def before_batch(self) -> None:
        """A micro-batch's forward pass is about to begin: keep the random state it sees."""
        self._require("before_batch()")
        assert self.batches is not None
        # the step it belongs to is the next one taken: keep it only if that is measured
        self.batches.begin(self.mode.keep(self.steps))

    def after_batch(self, batch: Any, loss: float | torch.Tensor) -> None:
        """Record a micro-batch (as the ``loss_fn`` given to ``finish`` takes it) and the
        loss the framework computed on it (unscaled: the loss ``loss_fn`` returns)."""
        self._require("after_batch()")
        assert self.batches is not None
        if not self.batches.pending():
            raise SessionMisuse("after_batch() without before_batch(): call "
                                "session.before_batch() before each micro-batch's forward "
                                "pass")
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        self.batches.end(batch, value)

    def _capacity(self) -> int:
        """Rows of a trajectory segment: the run's T + 1 when known (the files then hold
        what they will, even while the run writes them), else 4096."""
        return 4096 if self.expected_steps is None else self.expected_steps + 1

    def _check_lr(self) -> None:
        """Before a step: eta_t divides a_t and s_t, so a step at learning rate 0 (the
        first step of a warmup that starts at 0) would fail the measurement only after
        training; refuse it now, before it is taken (the partial directory removed)."""
        lr = self.optimizer.param_groups[self.lr_group]["lr"]
        if not lr > 0:
            self.abort()
            raise UserError(
                f"{self._api}: optimizer step {self.steps} has learning rate {lr} (param "
                f"group {self.lr_group}); trajreg needs eta_t > 0 at every step (a_t and s_t "
                "divide by it): start a warmup above 0, e.g. LambdaLR(optimizer, lambda t: "
                "min(1, (t + 1) / (warmup + 1))), or train without it")

    def _step_taken(self) -> None:
        assert self.batches is not None
        self.batches.step_taken()
        self.step_lrs.append(float(self.optimizer.param_groups[self.lr_group]["lr"]))
        if self.epoch_steps is not None and self.steps % self.epoch_steps == 0:
            self.end_epoch()

    @property
    def steps(self) -> int:
        return 0 if self.batches is None else self.batches.steps

    def end_epoch(self) -> None:
        if self.steps and (not self.epoch_ends or self.epoch_ends[-1] != self.steps):
            self.epoch_ends.append(self.steps)

    # ------------------------------------------------------------------ after training

    def _unhook(self) -> None:
        for name in ("_hook", "_lr_hook"):
            hook = getattr(self, name, None)
            if hook is not None:
                hook.remove()
        if self.batches is not None:
            self.batches.unhook()

    def abort(self) -> None:
        """Drop the partial run directory (training failed or was interrupted)."""
        atexit.unregister(self.abort)
        if self._state != "finished":
            self._state = "aborted"
        if self.recorder is not None:
            # at interpreter exit the store's writer thread can no longer seal its files
            with contextlib.suppress(Exception):
                self.recorder.close()
        self._unhook()
        if self.batches is not None:
            with contextlib.suppress(Exception):
                self.batches.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _aborting(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)``; on any failure the partial directory is dropped first."""
        try:
            return fn(*args)
        except BaseException:
            self.abort()
            raise

    def _agree_steps(self, model: torch.nn.Module, T: int) -> None:
        """Every rank took the same steps (FSDP2: of the same numbers of micro-batches,
        since every forward pass is a collective); FSDP2: the whole final state, gathered
        by every rank."""
        assert self.batches is not None
        empty = UserError("no optimizer step was taken: nothing to measure")
        counts = self.batches.counts() if self.shard is not None else b""
        every = self.ranks.agree("finishing training", None if T else empty, (T, counts))
        if len({t for t, _ in every}) > 1:
            raise UserError(f"the ranks took different numbers of optimizer steps "
                            f"({', '.join(str(t) for t, _ in every)}): not "
                            "data-parallel training")
        if len({c for _, c in every}) > 1:
            raise UserError("the ranks' optimizer steps took different numbers of "
                            "micro-batches: under FSDP2 the steps' losses cannot be "
                            "rebuilt (every forward pass is a collective)")
        if self.shard is not None:  # gathered by every rank, kept by rank 0
            self._final = full_state(model)

    @property
    def curvature_seed(self) -> int:
        """The seed of the curvature sample and of Lanczos' start vectors: the record
        mode's (``SampleMode(seed=...)``, as ``trajreg run`` uses the run's seed for
        both), 0 for a mode without one."""
        sampler = getattr(self.mode, "sampler", None)
        return int(getattr(sampler, "seed", 0))

    def _context(self, model: torch.nn.Module, loss_fn: LossFn, params: list[torch.Tensor],
                 k: int, ends: list[int], recorded: np.ndarray) -> SessionContext:
        assert self.tmp is not None and self.batches is not None
        return SessionContext(
            directory=self.tmp, steps=k, ranks=self.ranks, batches=self.batches,
            recorded=recorded, check=LossCheck(self.loss_rtol, self.rank_combine),
            model=model, loss_fn=loss_fn, device=params[0].device, params=params,
            put=lambda x: self._put(params, x), keep=self.mode.keep,
            sharded=self.shard is not None,
            # FSDP2: each rank holds a shard, the interpolation is not a whole vector
            mli=self.interpolation and self.shard is None, ends=ends,
            eval_batches=self.eval_batches)

    def finish(self, model: torch.nn.Module, loss_fn: LossFn) -> Summary:
        """Measure every step against x* = x_T, write the run directory, return its
        summary. Under DDP and FSDP2 every rank calls it (``trajreg.distributed.ranks``)."""
        if self._state == "finished":
            raise SessionMisuse(f"finish() was called twice: the first call wrote {self.out}")
        self._require("finish()")
        if self.recorder is not None:
            self.recorder.close()
        self._unhook()
        assert self.tmp is not None and self.batches is not None  # set by start
        T, ranks, batches = self.steps, self.ranks, self.batches
        self._aborting(self._agree_steps, model, T)
        epochs = ("epoch_steps" if self.epoch_steps is not None
                  else "end_epoch" if self.epoch_ends else "none")
        self.end_epoch()
        recorded = batches.step_losses()  # this rank's loss of each step, as logged
        # the global batch's loss, as training's loss was
        recorded_losses = list(LossCheck(self.loss_rtol, self.rank_combine).across(
            self._aborting(ranks.allsum, "finishing training", recorded), ranks.world))
        params = optimizer_params(self.optimizer)
        if not ranks.leader:
            return self._follow(model, loss_fn, params, recorded)
        unknown = batches.no_batch  # steps with no loss of their own
        try:
            finite = [t for t, v in enumerate(recorded_losses)
                      if t not in unknown and not math.isfinite(v)]
            diverged = finite[0] if finite else None
            k = T if diverged is None else diverged  # x* = x_k
            if k == 0:
                raise UserError("the loss of the first step was not finite: nothing to "
                                "measure")
            row = type(self.mode).rows(self.tmp / rundir.TRAJECTORY)
            ends = [e for e in self.epoch_ends if e <= k] or [k]
            with torch.no_grad(), kept_state(model), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # frameworks warn about logging outside a loop
                model.train()
                # x_T, before any x_t is loaded: lambda_max at x* (the curvature's)
                x_end = (flat_params(params).cpu().numpy()
                         if self.curvature is not None and k == T else None)
                ctx = self._context(model, loss_fn, params, k, ends, recorded)
                loss_x = list(recorded_losses[:k])  # rebuilt below where x_t was kept
                rebuilt = []
                for t in range(k):
                    x = row(t) if self.mode.keep(t) and t not in unknown else None
                    if x is not None:
                        ctx.load(x)
                        loss_x[t] = float(ctx.step_losses([t], check=True)[0])
                        rebuilt.append(t)
                        if len(ctx.mismatched) >= 16:  # enough to say what went wrong
                            break
                if ctx.beyond:
                    raise self._mismatch(ctx, len(rebuilt))
                measured = self.mode.measure(cast("MeasureContext", ctx), k)
                if self.curvature is not None and measured is not None:
                    self._add_curvature(ctx, measured, k, x_end)
            ranks.send(DONE)
        except BaseException as exc:
            if not isinstance(exc, RankFailed):
                with contextlib.suppress(Exception):  # the followers wait for a command
                    ranks.send(ABORT)
            self.abort()
            raise
        assert measured is not None  # a mode that keeps the trajectory measures
        measured.loss = np.asarray(loss_x, dtype=np.float64)[measured.steps]
        if unknown:
            measured = measured.select(~np.isin(measured.steps, sorted(unknown)))
        # every rank's rebuilt l_t(x_t) against its own loss from training, bit for bit
        check = {"steps": len(rebuilt), "equal": ctx.equal, "max_abs_diff": ctx.max_diff}
        if not ranks.single:
            check["ranks"] = ranks.world
        facts = {"epochs": epochs, "eval_batches": self.eval_batches, "loss_rtol": self.loss_rtol,
                 "skipped_steps": batches.skipped_steps,
                 "discarded_batches": batches.discarded,
                 "steps_without_batch": len(batches.no_batch)}
        self._report(facts, len(rebuilt))
        error: BaseException | None = None
        try:
            batches.close()  # measured: the log is complete, its index written
            run = SessionRun(loss_x=loss_x, lrs=self.step_lrs, ends=ends,
                             epoch_ends=self.epoch_ends, diverged=diverged, info=self.info,
                             source=self.source,
                             n_params=int(sum(p.numel() for p in params)),
                             loss_check=check, session=facts,
                             curvature=None if self.curvature is None
                             else dataclasses.asdict(self.curvature))
            summary = write_session_run(
                self.tmp, run, measured, self.mode, self.analysis,
                model if self.shard is None else StateOnly(self._final),
                figures=self.figures, tensorboard="tensorboard" in self.trackers)
        except BaseException as exc:  # every rank raises it (agree): this one its own
            error = exc
        # rename only when every rank succeeded
        self._aborting(ranks.agree, "writing the run directory", error)
        try:
            rundir.finish_dir(self.tmp, self.out)
        except BaseException as exc:
            self.abort()
            with contextlib.suppress(Exception):
                ranks.broadcast_object("renaming the run directory",
                                       " ".join(str(exc).split()) or type(exc).__name__)
            raise
        atexit.unregister(self.abort)
        self._state = "finished"
        ranks.broadcast_object("renaming the run directory", summary)
        mirror(self.out, self.trackers, self.runs)  # the leader; the run is complete
        return summary

    def _add_curvature(self, ctx: SessionContext, measured: Measured, k: int,
                       x_end: np.ndarray | None) -> None:
        """``record.curvature``: the kept rows of the steps before x* = x_k that have
        their micro-batches measured on them, as columns of the measurement, and
        lambda_max at x* = x_T on the last such step's micro-batches (None when x* is
        an earlier step, a diverged run's)."""
        assert self.tmp is not None and self.batches is not None and self.curvature
        batches = self.batches

        def rebuilt(t: int) -> bool:  # step t's loss can be rebuilt: its batches kept
            return (t < k and t not in batches.no_batch and self.mode.keep(t)
                    and batches.read(t) is not None)

        last = next((t for t in range(k - 1, -1, -1) if rebuilt(t)), None)
        rows = [t for t in (curvature.row_step(p)
                            for p in curvature.row_paths(self.tmp / rundir.TRAJECTORY))
                if t < k and t not in batches.no_batch and self.mode.keep(t)]
        self.ranks.send(CURVATURE)  # the followers measure in lockstep (_follow)
        found, at_star, facts = self._curvature_rows(
            ctx, rows, x_end, last if x_end is not None else None)
        if not found and not facts:
            among = (f"the {self.mode.name} mode's sample of the {k} steps" if self.mode.sampled
                     and not all(self.mode.keep(t) for t in range(k)) else f"the {k} steps")
            _notice(f"curvature: no step of {among} was in the curvature sample (rate "
                    f"{self.curvature.rate:g}): no curvature measured; raise "
                    f"{self._api}(curvature=dict(rate=...))")
        measured.columns.update(curvature.columns(measured.steps, found))
        at_end = at_star if x_end is not None else None
        measured.summary["curvature"] = {"lambda_max_end": at_end, "lambda_max_star": at_end,
                                         **facts}

    def _curvature_rows(self, ctx: SessionContext, rows: list[int],
                        x_end: np.ndarray | None, last: int | None
                        ) -> tuple[dict[int, curvature.CurvatureStep], float, dict[str, Any]]:
        """``curvature.measure_rows`` on every rank in lockstep (rank 0 gives ``rows``, the
        candidate steps, x* and its step; the others get them here): only the steps whose
        micro-batches every rank kept are measured, each rank differentiating its part of
        l_t, scaled so that the ranks' mean is the session's step loss (``rank_combine``
        sum: world times its part)."""
        assert self.tmp is not None and self.batches is not None and self.curvature
        ranks, batches = self.ranks, self.batches
        rows, x_end, last = ranks.broadcast_object("starting the curvature",
                                                   (rows, x_end, last))
        wanted = [*rows, *([] if last is None else [last])]
        missing = np.zeros(len(wanted))
        error: BaseException | None = None
        try:
            missing = np.asarray([batches.read(t) is None for t in wanted], np.float64)
        except Exception as exc:
            error = exc
        if not ranks.single:
            missing = ranks.allsum_checked("reading the curvature steps' micro-batches",
                                           missing, error)
        elif error is not None:
            raise error
        agreed = {t for t, m in zip(wanted, missing, strict=True) if m == 0}
        if last is not None and last not in agreed:
            last = None
        part = _RankPart(ctx, ranks.world if self.rank_combine == "sum" else 1)
        facts: dict[str, Any] = {}
        try:
            # the frameworks may call finish under no_grad or inference mode
            with torch.inference_mode(False), torch.enable_grad():
                found, at_star = curvature.measure_rows(
                    part, self.tmp / rundir.TRAJECTORY, self.curvature, self.curvature_seed,
                    x_star=x_end, last_step=last, ranks=ranks,
                    steps=lambda t: t in agreed and t in rows)
        except RankFailed:
            raise
        except RuntimeError as exc:
            # autograd's: loss_fn cannot be differentiated twice (a custom Function marked
            # once_differentiable, a kernel without a double backward, a loss computed
            # without a graph), on every rank alike (the same loss_fn) before any
            # collective of that step. The rest of the run's measurement is still worth
            # writing.
            found, at_star = {}, math.nan
            facts["error"] = " ".join(str(exc).split())
            if ranks.leader:
                _notice(f"curvature: not measured, the Hessian-vector products of loss_fn "
                        f"failed ({facts['error']}); the rest of the run is measured and "
                        "written")
        return found, at_star, facts

    def _mismatch(self, ctx: SessionContext, checked: int) -> LossMismatch:
        """The error of a run whose rebuilt losses are not its logged ones."""
        where = ""
        if ctx.mismatched:
            t, logged, rebuilt = ctx.mismatched[0]
            where = f" (step {t}: logged {logged:.9g}, rebuilt {rebuilt:.9g})"
            ratios = np.asarray([r / v for _, v, r in ctx.mismatched if v != 0])
            if ratios.size >= 2 and np.ptp(ratios) <= 1e-3 * abs(float(np.median(ratios))):
                where += (f"; rebuilt/logged = {float(np.median(ratios)):.4g} at every such "
                          "step: the loss given to after_batch looks scaled (e.g. divided by "
                          "the gradient accumulation steps): give the loss loss_fn returns")
        ranks = "" if self.ranks.single else " on some rank"
        return LossMismatch(
            f"the step losses rebuilt from the recorded micro-batches are not the losses the "
            f"training script logged{ranks}: {ctx.beyond} of {checked} checked steps differ "
            f"by more than loss_rtol={self.loss_rtol:g}{where}. trajreg compares the loss "
            "given to after_batch(batch, loss), combined over a step's micro-batches, with "
            "loss_fn(model, batch) on the same micro-batches at x_t. Likely causes: a scaled "
            "loss, a batch changed after after_batch (or not the one the forward pass saw), "
            "a loss_fn that is not the training loss, or a forward pass that is not "
            "deterministic (raise loss_rtol). Nothing was written")

    def _report(self, facts: dict[str, Any], checked: int) -> None:
        """One line on stderr for each thing that changed what was measured."""
        if facts["skipped_steps"]:
            _notice(f"{facts['skipped_steps']} round(s) of micro-batches "
                    f"({facts['discarded_batches']} micro-batches) had their gradients "
                    "cleared without an optimizer step (a skipped step): left out of the "
                    "next step's loss")
        if facts["steps_without_batch"]:
            _notice(f"{facts['steps_without_batch']} optimizer step(s) were taken with no "
                    "micro-batch since the previous step: no loss of their own, left "
                    "unmeasured")
        if facts["epochs"] == "none" and self.steps > 1:
            _notice(f"end_epoch() was never called: the run's {self.steps} steps are one "
                    "epoch, so the converging window is the first "
                    f"{self.analysis.max_fraction:g} of them and gamma per epoch has one "
                    "value; pass epoch_steps=N to cut it into epochs")
        if checked == 0:
            _notice("no step's loss could be rebuilt and checked against the logged loss "
                    "(the record mode kept no step's micro-batches): the measurement is "
                    "unchecked")

    def _put(self, params: list[torch.Tensor], x: np.ndarray) -> None:
        """Load the whole vector x into the parameters (FSDP2: this rank's entries)."""
        if self.shard is not None:
            reshard(self.model)  # else the next forward would use the parameters gathered
            put_local(params, self.shard, x, local_part)
        else:
            set_flat_params(params, x)

    def _follow(self, model: torch.nn.Module, loss_fn: LossFn, params: list[torch.Tensor],
                recorded: np.ndarray) -> Summary:
        """Rank r > 0 after training: serve rank 0's measurement (load x, rebuild this
        rank's step losses), then wait for rank 0 to write the run directory."""
        ranks = self.ranks
        try:
            with torch.no_grad(), kept_state(model), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.train()
                ctx = self._context(model, loss_fn, params, self.steps, [], recorded)
                while True:
                    op, payload, flag = ranks.receive()
                    if op == LOAD:
                        assert payload is not None
                        self._put(params, payload.numpy())
                    elif op == LOSSES:
                        assert payload is not None
                        ctx.rank_losses([int(t) for t in payload], check=bool(flag))
                    elif op == CURVATURE:
                        self._curvature_rows(ctx, [], None, None)
                    elif op == DONE:
                        break
                    else:
                        raise RankFailed("rank 0 failed while measuring the run (its own "
                                         "error says why)")
        finally:
            self.abort()  # this rank's micro-batches are no longer needed
        ranks.agree("writing the run directory")
        outcome = ranks.broadcast_object("renaming the run directory")
        if not isinstance(outcome, Summary):
            raise RankFailed(f"rank 0 failed while renaming the run directory: {outcome}")
        self._state = "finished"
        return outcome


def _check_trains(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer none of whose parameters is the model's: its steps would not
    move the model, and every D_t would be 0."""
    own = {id(p) for p in model.parameters()}
    if own and not any(id(p) in own for p in optimizer_params(optimizer)):
        raise SessionMisuse("the optimizer holds none of the model's parameters: give "
                            "start() the model the optimizer trains (e.g. "
                            "torch.optim.SGD(model.parameters(), ...))")


class _RankPart:
    """``record.curvature``'s context on one rank: ``load`` puts x into this rank's
    parameters only (every rank loads each row itself in ``measure_rows``), ``step_loss``
    is this rank's part of l_t times ``scale`` (``data_parallel`` averages the ranks)."""

    def __init__(self, ctx: SessionContext, scale: int) -> None:
        self.ctx, self.scale = ctx, scale

    def load(self, x: np.ndarray) -> None:
        self.ctx.put(x)
        self.ctx.forget()

    def curvature_parameters(self) -> list[torch.Tensor]:
        return self.ctx.curvature_parameters()

    def step_loss(self, t: int) -> torch.Tensor:
        loss = self.ctx.step_loss(t)
        return loss if self.scale == 1 else loss * self.scale
