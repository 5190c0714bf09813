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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from trajreg.errors import UserError
from trajreg.integrations.batches import BatchLog
from trajreg.integrations.ranks import (
    ABORT,
    DONE,
    LOAD,
    LOSSES,
    RankFailed,
    Ranks,
    Sharding,
    full_state,
    reshard,
    sharded_rows,
)
from trajreg.record.measured import Measured
from trajreg.record.modes import RecordMode, get_mode
from trajreg.record.modes.sample import SampleMode, SampleStore
from trajreg.record.recorder import Recorder, optimizer_params, set_flat_params
from trajreg.record.store import TrajectoryStore
from trajreg.run import analysis, rundir
from trajreg.run.runner import write_analysis
from trajreg.run.summary import Summary
from trajreg.train.config import AnalysisConfig
from trajreg.train.loop import TrainLog

if TYPE_CHECKING:
    from trajreg.record.modes.base import MeasureContext

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]

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


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor of a batch (nested in tuples, named tuples, lists
    and dicts); other leaves are kept as they are."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        items = [map_tensors(v, fn) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


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


def _rng_state() -> dict:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _kept_state(model: torch.nn.Module):
    """Move the model's parameters and evaluate it in train mode without leaving a
    trace: its state (parameters and BN statistics), mode and the global random
    state are restored afterwards."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    training = model.training
    rng = _rng_state()
    try:
        yield
    finally:
        reshard(model)  # FSDP2: the state is the shards'
        model.load_state_dict(state)  # copies in place
        model.train(training)
        _set_rng_state(rng)


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
        figures: write the PNG figures.
        combine: a step's loss from its micro-batch losses: their mean, or their sum
            (losses already normalised by the whole step's size).
        lr_group: the param group whose learning rate is eta_t.
        mode: the record mode (docs/record-modes.md): ``store`` (every x_t), ``sample``
            (a random sample of steps, exact; only the kept steps' micro-batches are
            saved) or ``sketch``, by name with its defaults or as a mode instance
            (e.g. ``SampleMode(rate=0.1, seed=1)``). Steps not measured exactly take
            l_t(x_t) from the loss the framework computed.
        timeout: under data-parallel training (``trajreg.integrations.ranks``), the
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

    Under DDP or FSDP2 (torch.distributed initialised with more than one process when
    ``start`` is called) every rank runs the same session: rank 0 alone records the
    trajectory (FSDP2: every rank its shard, into rank 0's directory) and writes
    ``out``; every rank keeps its own micro-batches and random states (rank r > 0 in its
    own ``.NAME.partial-*`` directory beside ``out``, removed at the end), rebuilds l_t
    on them, and the ranks' losses are added (``rank_combine``: their mean, or their
    sum for losses normalised by the global batch's size). See
    ``trajreg.integrations.ranks``.
    """

    def __init__(self, out: str | Path, *, source: str, eps: tuple[float, ...] = (0.0, 0.05),
                 loss_threshold: float = 0.1, tensorboard: bool = False, figures: bool = True,
                 combine: str = "mean", lr_group: int = 0,
                 mode: str | RecordMode = "store", timeout: float = 1800.0,
                 interpolation: bool = True, steps: int | None = None,
                 epoch_steps: int | None = None, eval_batches: int = EVAL_BATCHES,
                 loss_rtol: float = LOSS_RTOL) -> None:
        self.out = Path(out)
        if self.out.exists():
            raise UserError(f"output directory already exists: {self.out}")
        if combine not in ("mean", "sum"):
            raise UserError(f"combine: must be 'mean' or 'sum', got {combine!r}")
        if tensorboard:
            from trajreg.run.tensorboard import require_tensorboard

            require_tensorboard()
        self.source = source
        self.analysis = AnalysisConfig(eps=[float(e) for e in eps],
                                       loss_threshold=float(loss_threshold))
        try:
            self.analysis.validate()
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if isinstance(mode, str):
            if mode in ("replay", "off"):
                raise UserError(f"mode: {mode!r} cannot record an integration's run "
                                "(store, sample or sketch)")
            try:
                mode = get_mode(mode).from_config()
            except ValueError as exc:
                raise UserError(str(exc)) from None
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
        self.tensorboard, self.figures, self.combine = tensorboard, figures, combine
        self.lr_group = lr_group
        self.timeout = float(timeout)
        self.interpolation = bool(interpolation)
        self.ranks: Ranks | None = None  # set by start() under data-parallel training
        self.rank_combine = "mean"  # a step's loss from the ranks' losses: mean or sum
        self.sharding: Sharding | None = None  # FSDP2: this rank's entries of x
        self.tmp: Path | None = None
        self.recorder: Recorder | None = None
        self._started = 0  # micro-batches whose forward began
        self._rngs: dict[int, dict | None] = {}  # random state of started, unfinished micro-batches
        self.batch_losses: list[float] = []  # the framework's loss of each micro-batch
        self.step_bounds: list[int] = []  # micro-batches started when step t was taken
        self.step_first: list[int] = []  # the first micro-batch of step t (after discards)
        self._group = 0  # the first micro-batch whose gradient the next step can use
        # backward passes of each pending micro-batch at the probed parameters, and how
        # many of them found the gradient cleared (see _probe)
        self._fired: dict[int, int] = {}
        self._cleared: dict[int, int] = {}
        self._tokens: dict[int, tuple[int, int]] = {}
        self._probes: list[Any] = []
        self.skipped_steps = 0  # rounds of micro-batches discarded without a step
        self.discarded_batches = 0
        self.no_batch: set[int] = set()  # steps taken with no micro-batch of their own
        self.step_lrs: list[float] = []  # eta_t of each step taken
        self.epoch_ends: list[int] = []
        self.info: dict[str, Any] = {}
        self._api = "RegularitySession"
        self._state = "new"  # then started, and finished or aborted
        self._batches: BatchLog | None = None  # the kept micro-batches (batches/)

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
            if self.ranks is None:
                raise
            self.ranks.agree("starting", exc)  # the others raise too; this one re-raises
            raise
        if self.ranks is not None:
            try:
                every = self.ranks.agree("starting", facts=_replica(self.optimizer))
                _check_replicas(every)
                if every[0][2]:
                    self._start_shards()
            except BaseException:
                self.abort()
                raise
            self.info["ranks"] = self.ranks.world

    def _start_shards(self) -> None:
        """FSDP2: every rank records its own shard into rank 0's partial directory."""
        from trajreg.distributed.shards import SHARDED_MODES, shard_dir

        ranks = self.ranks
        assert ranks is not None
        if self.mode.name not in SHARDED_MODES:
            raise UserError(f"mode {self.mode.name!r} cannot record sharded (FSDP2) "
                            f"parameters: use one of {', '.join(SHARDED_MODES)}")
        leader = Path(ranks.broadcast_object("starting", str(self.tmp)))
        error: BaseException | None = None
        entry = None
        try:
            self.sharding = Sharding(optimizer_params(self.optimizer), ranks.rank, ranks.world)
            sharded = SHARDED_MODES[self.mode.name]
            if hasattr(sharded, "shard") and not isinstance(self.mode, sharded):
                # the sketch of a shard hashes each entry by its GLOBAL flat index (so the
                # ranks' sketches add up to the whole vector's) and decides S = I on the
                # whole d: the same mode, planned as it is, as its sharded class
                mode = sharded.__new__(sharded)
                mode.__dict__.update(self.mode.__dict__)
                self.mode = mode
            if hasattr(self.mode, "shard"):
                self.mode.shard(self.sharding.ranges, self.sharding.d)
            self.recorder = Recorder(self.optimizer,
                                     leader / rundir.TRAJECTORY / shard_dir(ranks.rank),
                                     mode=self.mode, lr_group=self.lr_group,
                                     capacity=self._capacity())
            entry = {"rank": ranks.rank, "dir": shard_dir(ranks.rank), "d": self.recorder.d,
                     "ranges": self.sharding.ranges}
        except Exception as exc:
            error = exc
        self._shards = ranks.agree("starting", error, entry)
        self.info["sharded"] = "fsdp2"

    def _start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               info: dict[str, Any] | None) -> None:
        _check_trains(model, optimizer)
        # every rank alike, before recording: one-pass modes size their samples from T
        self.mode.plan(self.expected_steps, self.analysis, words=api_words(self._api))
        # under DDP rank r > 0 keeps only its micro-batches there, rank 0 the run
        self.tmp = rundir.partial_dir(self.out)
        self._batches = BatchLog(self.tmp / "batches")
        # frameworks wrap the optimizer (accelerate's AcceleratedOptimizer, ...): the
        # step hooks belong on the torch optimizer that really updates the parameters
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = cast(Any, optimizer).optimizer  # the wrapper's torch optimizer
        self.model, self.optimizer = model, optimizer
        sharded = any(hasattr(p, "to_local") for p in optimizer_params(optimizer))
        # DDP: every rank holds every x_t, rank 0 records; FSDP2: _start_shards
        if self.ranks is None or (self.ranks.leader and not sharded):
            self.recorder = Recorder(optimizer, self.tmp / rundir.TRAJECTORY,
                                     mode=self.mode, lr_group=self.lr_group,
                                     capacity=self._capacity())
        # after the recorder's own hook: the step just taken closes its micro-batches
        self._hook = optimizer.register_step_post_hook(lambda *_: self._step_taken())
        if not sharded:  # FSDP2 assigns sharded gradients outside autograd's accumulation
            self._watch_clears(optimizer_params(optimizer))
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
        # the step it belongs to is the next one taken: keep it only if that is measured
        self._rngs[self._started] = _rng_state() if self.mode.keep(self.steps) else None
        self._started += 1

    def after_batch(self, batch: Any, loss: float | torch.Tensor) -> None:
        """Record a micro-batch (as the ``loss_fn`` given to ``finish`` takes it) and the
        loss the framework computed on it (unscaled: the loss ``loss_fn`` returns)."""
        self._require("after_batch()")
        i = len(self.batch_losses)
        if i not in self._rngs:
            raise SessionMisuse("after_batch() without before_batch(): call "
                                "session.before_batch() before each micro-batch's forward "
                                "pass")
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        rng = self._rngs.pop(i)
        if rng is not None:  # its step is measured
            # a copy of its own: torch.save of a view would write its whole base storage
            batch = map_tensors(batch, lambda t: t.detach().to("cpu", copy=True))
            assert self._batches is not None
            self._batches.append(i, (batch, rng))
        self.batch_losses.append(value)

    def _iterates(self) -> Callable[[int], np.ndarray | None]:
        """x_t by step (None where the mode did not keep it)."""
        assert self.tmp is not None
        directory = self.tmp / rundir.TRAJECTORY
        if self.sharding is not None:
            return sharded_rows(directory, isinstance(self.mode, SampleMode))
        if isinstance(self.mode, SampleMode):
            sample = SampleStore(directory)
            return lambda t: sample.row(t) if sample.has(t) else None
        return TrajectoryStore(directory).row

    def _capacity(self) -> int:
        """Rows of a trajectory segment: the run's T + 1 when known (the files then hold
        what they will, even while the run writes them), else 4096."""
        return 4096 if self.expected_steps is None else self.expected_steps + 1

    def _watch_clears(self, params: list[torch.Tensor]) -> None:
        """Hook a few parameters (the first, the last and the largest: used by every
        forward pass of almost any model) to see, at every backward pass, whether their
        gradient was cleared since the previous backward pass: None, or an in-place
        zeroed tensor (another version than the last accumulation left, all zeros)."""
        trained = [p for p in params if p.requires_grad]
        if not trained:
            return
        chosen = {id(p): p for p in (trained[0], trained[-1],
                                     max(trained, key=lambda p: p.numel()))}
        for key, p in chosen.items():
            self._probes.append(p.register_hook(
                lambda _grad, p=p, key=key: self._probe(p, key)))
            self._probes.append(p.register_post_accumulate_grad_hook(
                lambda p, key=key: self._tokens.__setitem__(key, (id(p.grad),
                                                                  p.grad._version))))

    def _probe(self, p: torch.Tensor, key: int) -> None:
        """Before a backward pass accumulates into ``p.grad``: count whether it was cleared
        (for the micro-batch whose forward began last)."""
        i = self._started - 1
        self._fired[i] = self._fired.get(i, 0) + 1
        g = p.grad
        if g is None or ((id(g), g._version) != self._tokens.get(key)
                         and not bool(g.detach().any())):
            self._cleared[i] = self._cleared.get(i, 0) + 1

    def _drop_discarded(self) -> None:
        """The pending micro-batches before the last one whose backward pass found every
        probed gradient cleared did not reach the step about to close: drop them."""
        cleared = [i for i, n in self._fired.items()
                   if i >= self._group and self._cleared.get(i, 0) == n]
        last = max(cleared, default=self._group)
        if last > self._group:
            self.skipped_steps += 1
            self.discarded_batches += last - self._group
            assert self._batches is not None
            for i in range(self._group, last):
                self._batches.forget(i)
            self._group = last
        # every pending micro-batch is now this step's or dropped
        self._fired.clear()
        self._cleared.clear()

    def _step_taken(self) -> None:
        self._drop_discarded()
        if self._group == self._started:
            self.no_batch.add(self.steps)
        self.step_first.append(self._group)
        self.step_bounds.append(self._started)
        self._group = self._started
        self.step_lrs.append(float(self.optimizer.param_groups[self.lr_group]["lr"]))
        if self.epoch_steps is not None and self.steps % self.epoch_steps == 0:
            self.end_epoch()

    @property
    def steps(self) -> int:
        return len(self.step_bounds)

    def end_epoch(self) -> None:
        if self.steps and (not self.epoch_ends or self.epoch_ends[-1] != self.steps):
            self.epoch_ends.append(self.steps)

    def _members(self, t: int) -> range:
        """The micro-batches of optimizer step t (without those discarded before it)."""
        return range(self.step_first[t], self.step_bounds[t])

    def _combine(self, values: list[float]) -> float:
        if not values:
            return math.nan
        return float(np.sum(values) if self.combine == "sum" else np.mean(values))

    # ------------------------------------------------------------------ after training

    def _step_batches(self, t: int) -> list | None:
        """Step t's recorded micro-batches and random states (None: one was started but
        never finished, so b_t is unknown)."""
        loaded = []
        assert self._batches is not None
        for i in self._members(t):
            record = self._batches.read(i)
            if record is None:
                return None
            loaded.append(record)
        return loaded

    def _step_loss(self, model: torch.nn.Module, loss_fn: LossFn, t: int,
                   device: torch.device, loaded: list | None = None) -> float:
        loaded = self._step_batches(t) if loaded is None else loaded
        if loaded is None:
            return math.nan
        values = []
        for batch, rng in loaded:
            _set_rng_state(rng)
            batch = map_tensors(batch, lambda t: t.to(device))
            values.append(float(loss_fn(model, batch).detach()))
        return self._combine(values)

    def _unhook(self) -> None:
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.remove()
        for probe in self._probes:
            probe.remove()
        self._probes = []

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
        if self._batches is not None:
            with contextlib.suppress(Exception):
                self._batches.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def finish(self, model: torch.nn.Module, loss_fn: LossFn) -> Summary:
        """Measure every step against x* = x_T, write the run directory, return its
        summary. Under DDP every rank calls it (see ``trajreg.integrations.ranks``)."""
        if self._state == "finished":
            raise SessionMisuse(f"finish() was called twice: the first call wrote {self.out}")
        self._require("finish()")
        if self.recorder is not None:
            self.recorder.close()
        self._unhook()
        assert self.tmp is not None  # set by start
        T, ranks = self.steps, self.ranks
        empty = UserError("no optimizer step was taken: nothing to measure")
        if ranks is not None:
            try:
                # FSDP2: every forward pass is a collective, the micro-batches must pair up
                counts = np.diff(self.step_bounds, prepend=0).tobytes() if self.sharding else b""
                every = ranks.agree("finishing training", None if T else empty, (T, counts))
                if len({t for t, _ in every}) > 1:
                    raise UserError(f"the ranks took different numbers of optimizer steps "
                                    f"({', '.join(str(t) for t, _ in every)}): not "
                                    "data-parallel training")
                if len({c for _, c in every}) > 1:
                    raise UserError("the ranks' optimizer steps took different numbers of "
                                    "micro-batches: under FSDP2 the steps' losses cannot be "
                                    "rebuilt (every forward pass is a collective)")
                if self.sharding is not None:  # gathered by every rank, kept by rank 0
                    self._final = full_state(model)
            except BaseException:
                self.abort()
                raise
        if T == 0:
            self.abort()
            raise empty
        epochs = ("epoch_steps" if self.epoch_steps is not None
                  else "end_epoch" if self.epoch_ends else "none")
        self.end_epoch()
        # this rank's loss of each step, as the framework computed it
        self._recorded = np.asarray([self._combine([self.batch_losses[i]
                                                    for i in self._members(t)
                                                    if i < len(self.batch_losses)])
                                     for t in range(T)], dtype=np.float64)
        recorded_losses = list(self._recorded)
        if ranks is not None:  # the global batch's loss, as training's loss was
            try:
                recorded_losses = list(self._across(ranks.allsum("finishing training",
                                                                 self._recorded)))
            except BaseException:
                self.abort()
                raise
        params = optimizer_params(self.optimizer)
        device = params[0].device
        if ranks is not None and not ranks.leader:
            return self._follow(model, loss_fn, params, device)
        unknown = self.no_batch  # steps with no loss of their own
        try:
            finite = [t for t, v in enumerate(recorded_losses)
                      if t not in unknown and not math.isfinite(v)]
            diverged = finite[0] if finite else None
            k = T if diverged is None else diverged  # x* = x_k
            if k == 0:
                raise UserError("the loss of the first step was not finite: nothing to "
                                "measure")
            if self.sharding is not None:
                from trajreg.distributed.shards import write_index

                write_index(self.tmp / rundir.TRAJECTORY, self.sharding.d, self._shards)
            row = self._iterates()
            ends = [e for e in self.epoch_ends if e <= k] or [k]
            with torch.no_grad(), _kept_state(model), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # frameworks warn about logging outside a loop
                model.train()
                ctx = _SessionContext(self, model, loss_fn, params, device, k, ends)
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
                if self.sharding is not None:  # the per-rank partial sums, added
                    from trajreg.distributed.shards import SHARDED_MODES

                    # a StoreMode or SampleMode (_start_shards refused any other); ctx.mli
                    # is False: no rank holds the whole interpolated vector
                    measured: Measured | None = SHARDED_MODES[self.mode.name].measure(
                        cast(Any, self.mode), cast("MeasureContext", ctx), k)
                else:
                    measured = self.mode.measure(cast("MeasureContext", ctx), k)
            if ranks is not None:
                ranks.send(DONE)
        except BaseException as exc:
            if ranks is not None and not isinstance(exc, RankFailed):
                with contextlib.suppress(Exception):  # the followers wait for a command
                    ranks.send(ABORT)
            self.abort()
            raise
        assert measured is not None  # store, sample and sketch measure
        measured.loss = np.asarray(loss_x, dtype=np.float64)[measured.steps]
        if unknown:
            measured = measured.select(~np.isin(measured.steps, sorted(unknown)))
        # every rank's rebuilt l_t(x_t) against its own loss from training, bit for bit
        check = {"steps": len(rebuilt), "equal": ctx.equal, "max_abs_diff": ctx.max_diff}
        if ranks is not None:
            check["ranks"] = ranks.world
        facts = {"epochs": epochs, "eval_batches": self.eval_batches, "loss_rtol": self.loss_rtol,
                 "skipped_steps": self.skipped_steps,
                 "discarded_batches": self.discarded_batches,
                 "steps_without_batch": len(self.no_batch)}
        self._report(facts, len(rebuilt))
        try:
            summary = self._write(model, params, measured, loss_x, ends, diverged, check,
                                  facts)
        except BaseException as exc:
            if ranks is None:
                self.abort()
                raise
            error: BaseException | None = exc
        else:
            error = None
        if ranks is not None:  # rename only when every rank succeeded
            try:
                ranks.agree("writing the run directory", error)
            except BaseException:
                self.abort()
                raise
        try:
            rundir.finish_dir(self.tmp, self.out)
        except BaseException as exc:
            self.abort()
            if ranks is not None:
                with contextlib.suppress(Exception):
                    ranks.broadcast_object("renaming the run directory",
                                           " ".join(str(exc).split()) or type(exc).__name__)
            raise
        atexit.unregister(self.abort)
        self._state = "finished"
        if ranks is not None:
            ranks.broadcast_object("renaming the run directory", summary)
        return summary

    def _mismatch(self, ctx: _SessionContext, checked: int) -> LossMismatch:
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
        ranks = "" if self.ranks is None else " on some rank"
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

    def _write(self, model: torch.nn.Module, params: list[torch.Tensor], measured: Measured,
               loss_x: list[float], ends: list[int], diverged: int | None,
               check: dict, session: dict[str, Any]) -> Summary:
        """Write the run directory's files into the partial directory."""
        k = len(loss_x)
        assert self.tmp is not None and self._batches is not None
        self._batches.close()  # measured: the log is complete, its index written
        full, start = [loss_x[0]], 0
        for e in ends:
            full.append(float(np.mean(loss_x[start:e])) if e > start else math.nan)
            start = e
        log = TrainLog(loss=loss_x, loss_star=list(measured.loss_star), full_loss=full,
                       lr=self.step_lrs[:k],
                       epoch_ends=ends,
                       epoch=(np.searchsorted(self.epoch_ends, np.arange(k), "right") + 1)
                       .tolist(), diverged_step=diverged)

        rundir.write_config(self.tmp, {"external": self.info,
                                       "record": {"mode": self.mode.name},
                                       "analysis": dataclasses.asdict(self.analysis)})
        # _State has the one thing write_final_state uses of a module: state_dict()
        rundir.write_final_state(self.tmp, model if self.sharding is None
                                 else cast(torch.nn.Module, _State(self._final)))
        facts = analysis.RunFacts(n_params=int(sum(p.numel() for p in params)),
                                  task="external", evaluation={}, source=self.source,
                                  loss_check=check, session=session)
        summary = write_analysis(
            self.tmp, log, measured, mode=self.mode.name, reference="final",
            options=analysis.AnalysisOptions.from_config(self.analysis), facts=facts,
            figures=self.figures, tensorboard=self.tensorboard, words=self.mode.words)
        return summary

    def _put(self, params: list[torch.Tensor], x: np.ndarray) -> None:
        """Load the whole vector x into the parameters (FSDP2: this rank's entries)."""
        if self.sharding is not None:
            self.sharding.put(self.model, params, x)
        else:
            set_flat_params(params, x)

    def _beyond(self, logged: np.ndarray, rebuilt: np.ndarray) -> np.ndarray:
        """Where a rebuilt loss is not the logged one: both finite, and further apart than
        ``loss_rtol`` times the larger magnitude (0: bit for bit)."""
        known = np.isfinite(logged) & np.isfinite(rebuilt)
        with np.errstate(invalid="ignore"):
            apart = np.abs(logged - rebuilt) > self.loss_rtol * np.maximum(np.abs(logged),
                                                                           np.abs(rebuilt))
        return known & apart

    def _across(self, total: np.ndarray) -> np.ndarray:
        """A step's loss from the sum of the ranks' losses."""
        assert self.ranks is not None
        return total / self.ranks.world if self.rank_combine == "mean" else total

    def _follow(self, model: torch.nn.Module, loss_fn: LossFn, params: list[torch.Tensor],
                device: torch.device) -> Summary:
        """Rank r > 0 after training: serve rank 0's measurement (load x, rebuild this
        rank's step losses), then wait for rank 0 to write the run directory."""
        ranks = self.ranks
        assert ranks is not None
        try:
            with torch.no_grad(), _kept_state(model), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.train()
                ctx = _SessionContext(self, model, loss_fn, params, device, self.steps, [])
                while True:
                    op, payload, flag = ranks.receive()
                    if op == LOAD:
                        assert payload is not None
                        self._put(params, payload.numpy())
                    elif op == LOSSES:
                        assert payload is not None
                        ctx.rank_losses([int(t) for t in payload], check=bool(flag))
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


class _State:
    """What ``rundir.write_final_state`` needs of a model: its state dict."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class _SessionContext:
    """``MeasureContext`` of an integration: step t's loss is rebuilt from its recorded
    micro-batches and random states; F(x*) is the mean of l_t(x*) over the last epoch
    (F_k is the running epoch loss here), and the interpolation's F is that same mean;
    a session cannot replay.

    Under DDP rank 0's context sends each ``load`` and each uncached ``step_losses`` to
    the other ranks (``trajreg.integrations.ranks``), whose contexts run ``rank_losses``
    with it. ``equal`` and ``max_diff`` accumulate the checks of ``step_losses(...,
    check=True)``: the steps at which every rank's rebuilt loss equals its own loss from
    training bit for bit, and the largest difference."""

    def __init__(self, session: RegularitySession, model: torch.nn.Module, loss_fn: LossFn,
                 params: list[torch.Tensor], device: torch.device, k: int,
                 ends: list[int]) -> None:
        self.session, self.model, self.loss_fn = session, model, loss_fn
        self.params, self.device, self.ends = params, device, ends
        self.directory, self.steps = session.tmp, k
        self._at: dict[int, float] = {}
        self.equal, self.max_diff = 0, 0.0
        self.beyond = 0  # checked steps beyond loss_rtol on some rank
        self.mismatched: list[tuple[int, float, float]] = []  # this rank's: t, logged, rebuilt
        # FSDP2: each rank holds a shard, the interpolation is not a whole vector to load
        self.mli = session.interpolation and session.sharding is None

    def load(self, x: np.ndarray) -> None:
        if self.session.ranks is not None:
            self.session.ranks.send(LOAD, x)
        self.session._put(self.params, x)
        self._at = {}

    def step_losses(self, steps: Sequence[int], check: bool = False) -> np.ndarray:
        todo = [t for t in dict.fromkeys(int(t) for t in steps) if t not in self._at]
        if todo:
            if self.session.ranks is not None:
                self.session.ranks.send(LOSSES, np.asarray(todo), flag=int(check))
            self._at.update(zip(todo, self.rank_losses(todo, check), strict=True))
        return np.asarray([self._at[int(t)] for t in steps], dtype=np.float64)

    def rank_losses(self, steps: list[int], check: bool) -> np.ndarray:
        """l_t at the loaded parameters: this rank's, from its own micro-batches, and
        under DDP or FSDP2 added over the ranks (every rank calls it with the same
        steps; a rank's own failure is handed on in the collective, so that every rank
        leaves together)."""
        session, ranks = self.session, self.session.ranks
        n = len(steps)
        local = np.full(n, np.nan)
        if ranks is None:
            for i, t in enumerate(steps):
                local[i] = session._step_loss(self.model, self.loss_fn, t, self.device)
            return self._checked(steps, local, local, check)
        loaded: list = [None] * n
        complete = np.ones(n, dtype=bool)
        error: BaseException | None = None
        if session.sharding is not None:
            # FSDP2: a forward pass is a collective, so every rank first reads all its
            # micro-batches, then the ranks agree on the steps complete on every rank
            try:
                loaded = [session._step_batches(t) for t in steps]
            except Exception as exc:
                error = exc
            missing = np.asarray([b is None for b in loaded], dtype=np.float64)
            complete = ranks.allsum_checked("reading its micro-batches", missing, error) == 0
        try:
            for i, t in enumerate(steps):
                if complete[i]:
                    local[i] = session._step_loss(self.model, self.loss_fn, t, self.device,
                                                  loaded[i])
        except Exception as exc:
            error = exc
        unequal = (session._recorded[steps] != local).astype(np.float64)
        beyond = session._beyond(session._recorded[steps], local).astype(np.float64)
        total = ranks.allsum_checked("rebuilding its step losses",
                                     np.concatenate([local, unequal, beyond]), error)
        return self._checked(steps, local, session._across(total[:n]), check,
                             total[n:2 * n], total[2 * n:])

    def _checked(self, steps: list[int], local: np.ndarray, values: np.ndarray, check: bool,
                 unequal: np.ndarray | None = None,
                 beyond: np.ndarray | None = None) -> np.ndarray:
        """``values``; with ``check`` (the parameters are x_t) also counts the steps at
        which every rank's rebuilt loss (``local`` here) equals its loss from training
        (``unequal``: the number of ranks where it does not) and those at which it differs
        by more than ``loss_rtol`` on some rank (``beyond``)."""
        if check:
            recorded = self.session._recorded[steps]
            if unequal is None:
                unequal = (recorded != local).astype(np.float64)
            mine = self.session._beyond(recorded, local)
            self.beyond += int(np.sum(mine if beyond is None else beyond > 0))
            self.mismatched += [(int(steps[i]), float(recorded[i]), float(local[i]))
                                for i in np.flatnonzero(mine)]
            known = np.isfinite(recorded) & np.isfinite(local)
            diff = float(np.max(np.abs(recorded - local)[known], initial=0.0))
            if self.session.ranks is not None:
                diff = self.session.ranks.allmax("measuring", diff)
            self.equal += int(np.sum(unequal == 0))
            self.max_diff = max(self.max_diff, diff)
        return values

    def f_star(self, k: int) -> float:
        """The mean of the step losses over the evaluation set: the last measured steps
        (micro-batches kept, a loss of their own) of the last epoch before k, until they
        hold ``eval_batches`` micro-batches."""
        last = self.ends[-2] if len(self.ends) > 1 else 0
        keep, unknown = self.session.mode.keep, self.session.no_batch
        steps = ([t for t in range(last, k) if keep(t) and t not in unknown]
                 or [t for t in range(k) if keep(t) and t not in unknown])
        size = 0
        for i in range(len(steps) - 1, -1, -1):
            size += len(self.session._members(steps[i]))
            if size >= self.session.eval_batches:
                steps = steps[i:]
                break
        return float(np.mean(self.step_losses(steps))) if steps else math.nan

    def replay(self, k: int) -> Measured:
        raise UserError("a run recorded by an integration cannot be replayed")

    def interpolated_losses(self, alphas: Sequence[float], x0: np.ndarray,
                            x_star: np.ndarray) -> np.ndarray:
        """F as ``f_star`` evaluates it here (the mean of the last epoch's kept steps'
        losses, each on its own micro-batches and random state, in training mode) at
        (1 - alpha) x0 + alpha x* for each alpha; alpha 1 is ``f_star`` bit for bit.
        Normalization buffers stay the trained model's: a training-mode forward pass
        normalizes with the micro-batch's own statistics. Leaves x* loaded."""
        start, end = np.asarray(x0, np.float64), np.asarray(x_star, np.float64)
        out = []
        for alpha in alphas:
            a = float(alpha)
            self.load((1.0 - a) * start + a * end)
            out.append(self.f_star(self.steps))
        self.load(end)
        return np.asarray(out, dtype=np.float64)
