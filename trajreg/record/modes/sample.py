"""Record mode ``sample``: exact quantities at a random sample of steps, one pass.

Each optimizer step t is kept independently with probability R, decided before the
step by a generator seeded from the run seed, so an integration keeps the micro-batches
of the kept steps only. R is fixed by ``plan(T, ...)`` before training:
R = min(1, max(rate, min_steps / T)) (``record.sample_rate``, default 0.05, and
``record.sample_min_steps``, default 200), so a short run still keeps about min_steps
steps (a two-sided interval for gamma_hat(0.05) needs 72 in the window) and a long one
keeps the fraction ``rate``; with T unknown (``plan(None, ...)``) R = rate, with a
warning. For a kept step the mode writes x_t
and x_{t+1} (each just before its step, as store mode takes every row) to
``trajectory/``; after training a_t, s_t, D_t come from
``trajectory_quantities([x_t, x_{t+1}], [eta_t], x*)``, the function store mode
streams, so they equal store mode's values bit for bit, and b_t = l_t(x_t) - l_t(x*)
from step t's own minibatch and random state. The summary gets confidence intervals
for the full window's estimates (``trajreg.principle.interval``; see
``trajreg.principle.onepass_summary``). Memory O(d); disk about 2 R d floats a step.

Reference point: x* = x_T (``reanalyse = ("final",)``). The mode always stores x_0,
x_{T-1} and x_T, so a diverged run (its reference is x_{T-1}, the last iterate before
the step whose loss was not finite) is measured exactly as in store mode. Another
reference k whose iterate was not stored (a diverged run's last finite epoch end) is
replaced by the latest stored iterate before it; ``reference_step`` says which.

With ``gradients`` (the default) the gradient g_t of each kept step is written too
(``g.bin``, a row per kept step), and g_dot_t, g_norm2_t are measured exactly at the
kept steps. ||x_t - x_{t+1}||^2 of every step is recorded online (``su.bin``, float64)
for the path ratio.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import numpy.typing as npt
import torch

from trajreg.errors import ConfigError, DamagedRun, UserError
from trajreg.principle import gradient_quantities, trajectory_quantities
from trajreg.record.geometry import SquaredNorms, endpoint_summary
from trajreg.record.measured import Measured
from trajreg.record.modes.base import (
    MeasureContext,
    Recording,
    RecordMode,
    foreign_sidecars,
    gradients_option,
    read_sidecar_json,
)
from trajreg.record.shards import SHARDS, Parts, Shard

if TYPE_CHECKING:
    from collections.abc import Sequence


TRAJECTORY = "trajectory"
SIDECAR = "sample.json"
ROWS = "x.bin"
GRADS = "g.bin"  # g_t of each kept step, in the order of the kept steps
SKETCHES = "sketch"  # mode sketch's trajectory/sketch/ (no sample has one)
STEP_NORMS = "su.bin"  # ||x_t - x_{t+1}||^2 of every step, float64
FORMAT = "trajreg-sample/1"
STREAM_SAMPLE = 3  # SeedSequence([seed, 3, block]) draws the sample of mode sample
STREAM_CHECK = 4  # ... and [seed, 4, block] the exact check sample of mode sketch
MIN_WINDOW = 72  # fewest window samples with a two-sided 95% interval for eps = 0.05
# Fewest kept steps of a run of known length (plan). A window of half a 300-step run
# then expects 100 samples (72 is 4.8 sd below); windows down to 41% of it hold 72 in
# 97.5% of runs. Runs of <= 200 steps keep every step (exact, no interval needed).
DEFAULT_MIN_STEPS = 200


def effective_rate(rate: float, min_steps: int, steps: int | None) -> float:
    """The rate a one-pass mode samples at in a run of ``steps`` steps:
    min(1, max(rate, min_steps / steps)); ``rate`` when the length is unknown (None)."""
    if steps is None:
        return float(rate)
    if steps <= min_steps:
        return 1.0
    return min(1.0, max(float(rate), min_steps / steps))


class StepSampler:
    """Which steps are kept: step t is kept iff U_t < rate, U_t uniform on [0, 1).

    U_t is entry t % 4096 of block t // 4096, drawn from
    ``numpy.random.default_rng(SeedSequence([seed, stream, block]))``, so ``keep(t)``
    is a pure function of (seed, stream, rate, t), known before step t, in any order;
    and the steps kept at a rate are a subset of those kept at any higher rate. The
    rate is fixed at construction (a mode's ``plan`` builds a new sampler).
    """

    BLOCK = 4096

    def __init__(self, rate: float, seed: int = 0, stream: int = STREAM_SAMPLE) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {rate!r}")
        self.rate, self.seed, self.stream = float(rate), int(seed), int(stream)
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()

    def _block(self, b: int) -> np.ndarray:
        block = self._blocks.get(b)
        if block is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.stream, b]))
            block = rng.random(self.BLOCK) < self.rate
            self._blocks[b] = block
            if len(self._blocks) > 4:
                self._blocks.popitem(last=False)
        return block

    def keep(self, t: int) -> bool:
        if self.rate >= 1.0:
            return True
        b, i = divmod(int(t), self.BLOCK)
        return bool(self._block(b)[i])

    def kept(self, n: int) -> np.ndarray:
        """The kept steps among 0..n-1."""
        parts = [np.flatnonzero(self._block(b)) + b * self.BLOCK
                 for b in range(-(-n // self.BLOCK))]
        steps = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return steps[steps < n].astype(np.int64)


class SampleWriter:
    """Appends iterate rows to ``x.bin`` (raw, ``dtype``, d per row); the sidecar
    ``sample.json`` (which iterate each row is, the kept steps and their eta_t) is
    written at ``close``. A run directory is renamed into place only when complete,
    so a crash leaves no half-written sample behind. Memory O(d)."""

    def __init__(self, directory: Path, d: int, dtype: npt.DTypeLike) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / SIDECAR).exists() or (self.dir / ROWS).exists():
            raise FileExistsError(f"{self.dir} already holds a sample; refusing to overwrite")
        self.d, self.dtype = int(d), np.dtype(dtype)
        self._file = open(self.dir / ROWS, "wb")  # noqa: SIM115 - closed in close()
        self.iterates: list[int] = []  # iterate number of each row
        self._written: set[int] = set()
        self.kept: list[int] = []
        self.lrs: list[float] = []
        self._grads: Any = None  # g.bin, opened by the first gradient row
        self.closed = False

    def has(self, t: int) -> bool:
        return t in self._written

    def write(self, t: int, x: torch.Tensor) -> None:
        """Row x_t (a flat tensor of the writer's dtype), once per iterate."""
        if t in self._written:
            return
        row = x.detach().to("cpu").numpy()
        buf = np.ascontiguousarray(row, dtype=self.dtype)
        self._file.write(memoryview(buf).cast("B"))  # type: ignore[arg-type]  # numpy stubs give ndarray __buffer__ only for py>=3.12
        self.iterates.append(int(t))
        self._written.add(int(t))

    def step(self, t: int, lr: float) -> None:
        self.kept.append(int(t))
        self.lrs.append(float(lr))

    def write_grad(self, g: torch.Tensor) -> None:
        """g_t of the step just kept (``step``): one row of ``g.bin`` per kept step."""
        if self._grads is None:
            self._grads = open(self.dir / GRADS, "wb")  # noqa: SIM115 - closed in close()
        row = g.detach().to("cpu").numpy()
        buf = np.ascontiguousarray(row, dtype=self.dtype)
        self._grads.write(memoryview(buf).cast("B"))  # type: ignore[arg-type]  # numpy stubs give ndarray __buffer__ only for py>=3.12

    def close(self, steps: int, meta: dict[str, Any]) -> None:
        self._file.close()
        if self._grads is not None:
            self._grads.close()
        self.closed = True
        payload = {"format": FORMAT, "d": self.d, "dtype": self.dtype.str, "steps": int(steps),
                   "iterates": self.iterates, "kept": self.kept, "lr": self.lrs,
                   "gradients": self._grads is not None, **meta}
        tmp = self.dir / (SIDECAR + ".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(self.dir / SIDECAR)


class SampleStore:
    """Read access to a sample written by ``SampleWriter``: ``row(t)`` is x_t."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        path = self.dir / SIDECAR
        if not path.is_file():
            raise FileNotFoundError(f"no sampled trajectory at {self.dir} (missing {SIDECAR})")
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown sample format {meta.get('format')!r}")
        self.meta = meta
        self.d: int = meta["d"]
        self.dtype = np.dtype(meta["dtype"])
        self.steps: int = meta["steps"]
        self.kept = np.asarray(meta["kept"], dtype=np.int64)
        self.lrs = np.asarray(meta["lr"], dtype=np.float64)
        self._row_of = {int(t): i for i, t in enumerate(meta["iterates"])}
        self.gradients: bool = bool(meta.get("gradients", False))
        self._kept_at = {int(t): i for i, t in enumerate(self.kept)}

    @property
    def iterates(self) -> np.ndarray:
        """The iterate numbers stored, ascending."""
        return np.asarray(sorted(self._row_of), dtype=np.int64)

    def has(self, t: int) -> bool:
        return int(t) in self._row_of

    def row(self, t: int) -> np.ndarray:
        i = self._row_of.get(int(t))
        if i is None:
            raise IndexError(f"iterate x_{t} was not sampled")
        size = self.d * self.dtype.itemsize
        return np.fromfile(self.dir / ROWS, dtype=self.dtype, count=self.d, offset=i * size)

    def grad(self, t: int) -> np.ndarray:
        """g_t of kept step t (recorded with gradients)."""
        i = self._kept_at.get(int(t))
        if i is None or not self.gradients:
            raise IndexError(f"no gradient of step {t} was kept")
        size = self.d * self.dtype.itemsize
        return np.fromfile(self.dir / GRADS, dtype=self.dtype, count=self.d, offset=i * size)


class SampleMode(RecordMode):
    name = "sample"
    reanalyse: ClassVar[tuple[str, ...]] = ("final",)
    cost = "memory O(d); disk about 2 R d floats a step (x_t and x_{t+1} of each kept step)"
    gradients = True  # g_t of the kept steps (R d floats a step)
    sampled: ClassVar[bool] = True  # the sketch's exact check sample too
    keeps_trajectory: ClassVar[bool] = True
    shardable: ClassVar[bool] = True

    def __init__(self, rate: float = 0.05, seed: int = 0, stream: int = STREAM_SAMPLE,
                 gradients: bool | None = None, min_steps: int = DEFAULT_MIN_STEPS) -> None:
        """``rate``: the fraction of steps kept (at least, once planned); ``min_steps``:
        the fewest steps a run of known length keeps (``plan``; 0: the rate alone)."""
        self.sampler = StepSampler(rate, seed, stream)
        self.requested_rate = self.sampler.rate
        if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
            raise ValueError(f"min_steps must be a non-negative integer, got {min_steps!r}")
        self.min_steps = min_steps
        self.planned_steps: int | None = None
        if gradients is not None:
            self.gradients = gradients
        self.writer: SampleWriter | None = None
        self._x: torch.Tensor | None = None  # x_t of the step in progress (O(d))
        self._xs: list[torch.Tensor] = []  # x_{t-1} and x_t (the step norms)
        self._norms: SquaredNorms | None = None
        self._g: torch.Tensor | None = None  # g_t of a kept step (O(d))

    @property
    def rate(self) -> float:
        """The rate in use: the requested one, or the effective one once planned."""
        return self.sampler.rate

    @classmethod
    def from_config(cls, cfg: Any = None, seed: int = 0) -> SampleMode:
        if cfg is None:
            return cls(seed=seed)
        return cls(rate=cfg.sample_rate, seed=seed, gradients=getattr(cfg, "gradients", None),
                   min_steps=getattr(cfg, "sample_min_steps", DEFAULT_MIN_STEPS))

    def _check_reference(self, analysis: Any) -> None:
        if analysis is not None and analysis.reference not in self.reanalyse:
            raise ConfigError(f"analysis.reference: record mode {self.name} measures against "
                              f"the final iterate only, not {analysis.reference!r} (use "
                              "record mode store or replay)")

    def _set_rate(self, steps: int | None) -> None:
        """Fix the effective rate for a run of ``steps`` steps, before training only (a
        sampler changed once steps were kept would make keep(t) a function of when it
        was asked)."""
        if self.writer is not None:
            raise RuntimeError(f"mode {self.name}: plan() after training started")
        self.planned_steps = steps
        rate = effective_rate(self.requested_rate, self.min_steps, steps)
        self.sampler = StepSampler(rate, self.sampler.seed, self.sampler.stream)

    def plan(self, steps: int | None, analysis: Any, *,
             words: Mapping[str, str] | None = None) -> None:
        """Refuse a reference other than the final iterate; fix the rate at
        min(1, max(rate, min_steps / steps)); warn before training when the steps are
        unknown (the plain rate), or when even the largest window (``analysis.max_fraction``
        of the steps) cannot hold enough samples for a two-sided interval."""
        super().plan(steps, analysis, words=words)
        self._check_reference(analysis)
        self._set_rate(steps)
        w = self.words
        if steps is None:
            warnings.warn(f"the number of steps is unknown ({w['steps']}), so mode "
                          f"{self.name} keeps each step with probability {self.rate:g} "
                          f"({w['rate']}) however short the run: a two-sided 95% interval "
                          f"for gamma_hat(0.05) needs {MIN_WINDOW} kept steps in the "
                          f"analysis window, a window of {MIN_WINDOW / self.rate:.0f} steps "
                          f"at this rate. Give {w['steps']} to keep at least "
                          f"{self.min_steps} steps ({w['min_steps']}), or raise {w['rate']}",
                          UserWarning, stacklevel=2)
            return
        expected = self.rate * getattr(analysis, "max_fraction", 0.9) * steps
        if expected < MIN_WINDOW and self.rate < 1.0:  # every step kept: exact, no interval
            warnings.warn(f"{w['rate']}: {self.rate:g} of {steps} steps keeps about "
                          f"{expected:.0f} steps of the analysis window; a two-sided 95% "
                          f"interval for gamma_hat(0.05) needs {MIN_WINDOW} (raise "
                          f"{w['min_steps']} or {w['rate']}, or train longer): the summary "
                          "will say insufficient samples", UserWarning, stacklevel=2)

    # ------------------------------------------------------------ during training
    def keep(self, step: int) -> bool:
        return self.sampler.keep(step)

    def open(self, rec: Recording, directory: Path | None, *, shard: Shard | None = None,
             **_: Any) -> None:
        if directory is None:
            raise ValueError(f"mode {self.name!r} needs a directory to write its sample to")
        dtype = np.float64 if rec.dtype == torch.float64 else np.float32
        self.writer = SampleWriter(directory, rec.d, dtype)
        self._x = torch.empty(rec.d, dtype=torch.float64 if dtype == np.float64 else torch.float32,
                              device=rec.params[0].device)

    def _sample_rows(self, step: int, lr: float, x: torch.Tensor) -> None:
        """Step ``step`` is about to be taken from ``x`` = x_t: write x_t if step t is
        sampled, if step t-1 was (x_t is its x_{t+1}, taken here as store mode takes it:
        just before the next step), or t = 0."""
        sampled = self.sampler.keep(step)
        assert self.writer is not None
        if step == 0 or sampled or self.sampler.keep(step - 1):
            self.writer.write(step, x)
        if sampled:
            self.writer.step(step, lr)

    def _sample_grad(self, rec: Recording, step: int) -> None:
        """With gradients: g_t of a kept step, as the optimizer is about to use it."""
        if self.gradients and self.sampler.keep(step):
            assert self.writer is not None and self._x is not None
            if self._g is None:
                self._g = torch.empty(rec.d, dtype=self._x.dtype, device=self._x.device)
            self.writer.write_grad(rec.grad_flat(out=self._g))

    def pre_step(self, rec: Recording, step: int, lr: float) -> None:
        if self._norms is None:  # x_{t-1} and x_t in turn, ||x_{t-1} - x_t||^2 online
            assert self.writer is not None and self._x is not None
            self._xs = [self._x, torch.empty_like(self._x)]
            self._norms = SquaredNorms(self.writer.dir / STEP_NORMS, rec.d, self._x.device)
        x = self._xs[step % 2]
        rec.flat(out=x)  # kept in memory: x_{T-1} is stored at close
        self._norms.push_next(x)  # ||x_{t-1} - x_t||^2 (t > 0)
        self._x = x
        self._sample_rows(step, lr, x)
        self._sample_grad(rec, step)

    def _meta(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.sampler.seed, "stream": self.sampler.stream,
                "requested_rate": self.requested_rate, "min_steps": self.min_steps,
                "planned_steps": self.planned_steps}

    def close(self, rec: Recording) -> None:
        if self.writer is None or self.writer.closed:
            return
        T = rec.steps
        assert self._x is not None
        x_end = self._x
        if T >= 1:
            self.writer.write(T - 1, self._x)  # the last pre_step's x_t (once)
            x_end = self._xs[T % 2]
        rec.flat(out=x_end)
        if self._norms is not None:
            self._norms.push_next(x_end)
            self._norms.close()
        self.writer.write(T, x_end)
        self.writer.close(T, self._meta())
        self._x = self._g = None
        self._xs = []

    # ------------------------------------------------------------ after training
    def reference(self, store: SampleStore, k: int, ctx: MeasureContext) -> int:
        """k for the final iterate x_T, for a diverged run's or an integration's reference
        when x_k is stored. Otherwise, for a diverged run (its last finite epoch end) or an
        integration's (the step before its first non-finite loss), the latest stored
        iterate before k; any other reference (``best``, an epoch end) is refused, even
        when x_k happens to be a sampled step, so that it does not depend on the draw."""
        log = getattr(ctx, "log", None)  # the reference loop's training log
        if store.has(k) and (log is None or log.diverged_step is not None
                             or k == int(store.iterates[-1])):
            return k
        if log is not None and log.diverged_step is None:
            raise UserError(f"record mode {self.name} keeps x_{k} only at sampled steps, "
                            "x_0, x_{T-1} and x_T: it measures against the final iterate "
                            "only (use record mode store or replay for another reference)")
        before = store.iterates[store.iterates <= k]
        return int(before[-1]) if before.size else int(store.iterates[0])

    def measure(self, ctx: MeasureContext, k: int) -> Measured:
        """D, a, s (and with gradients g_dot, g_norm2) at the kept steps against x_k, as
        sums over the trajectory's parts (one, or an FSDP2 run's ranks) of each part's
        partial sums against its entries of x_k; l_t(x*) at the kept steps."""
        parts = Parts(Path(ctx.directory) / TRAJECTORY)
        stores = read_samples(parts)
        first = stores[0]
        k = self.reference(first, k, ctx)
        use = first.kept < ctx.steps  # every recorded kept step, also those after x_k
        steps, lrs = first.kept[use], first.lrs[use]
        D, a, s = (np.zeros(len(steps)) for _ in range(3))
        gradients = all(store.gradients for store in stores)
        g_dot, g_norm2 = np.zeros(len(steps)), np.zeros(len(steps))
        for store in stores:
            x_star = store.row(k).astype(np.float64)  # this part's entries of x_k
            for i, (t, lr) in enumerate(zip(steps, lrs, strict=True)):
                q = trajectory_quantities(np.stack([store.row(t), store.row(t + 1)]), [lr],
                                          x_star)
                D[i] += q.D[0]
                a[i] += q.a[0]
                s[i] += q.s[0]
                if gradients:
                    g = gradient_quantities(store.row(t)[None], store.grad(t)[None], x_star)
                    g_dot[i] += g.g_dot[0]
                    g_norm2[i] += g.g_norm2[0]
        columns = {"g_dot": g_dot, "g_norm2": g_norm2} if gradients else {}
        x_star = parts.assemble([store.row(k) for store in stores]).astype(np.float64)
        ctx.load(x_star)
        # an int64 array of steps, used as a Sequence[int]
        loss_star, f_star = ctx.step_losses(cast("Sequence[int]", steps)), ctx.f_star(k)
        summary = {}
        if all((d / STEP_NORMS).is_file() for d in parts.dirs):
            # ||u_t||^2 of every step, summed over the parts before the square root: the
            # path ratio is exact
            summary = endpoint_summary(ctx, k, parts.assemble([st.row(0) for st in stores]),
                                       x_star, np.sqrt(parts.summed(STEP_NORMS, k)))
        return Measured(steps=steps, D=D, a=a, s=s, lr=lrs, loss_star=loss_star,
                        f_star=f_star, reference_step=k, columns=columns, summary=summary)

    # ------------------------------------------------------------ a finished run's files
    own_files: ClassVar[tuple[str, ...]] = (SIDECAR, SHARDS)

    @classmethod
    def verify(cls, directory: Path, steps: int, checksums: bool = True) -> None:
        """sample.json well formed for a run of ``steps`` steps (``check_sample``), x.bin
        a row per stored iterate, g.bin a row per kept step (with gradients), su.bin
        ||u_t||^2 of every step; of an FSDP2 run, every rank's sample, the ranks'
        samples alike. The mode writes no checksums of its own: its files' contents are
        covered by the run's checksums.json (``rundir.verify_manifest``)."""
        directory = Path(directory)
        foreign_sidecars(cls, directory)
        parts = Parts(directory)
        for part in parts.dirs:
            cls._verify_files(part, steps, checksums)
        read_samples(parts)

    @classmethod
    def rows(cls, directory: Path) -> Callable[[int], np.ndarray | None]:
        parts = Parts(directory)
        stores = read_samples(parts)
        return lambda t: (parts.assemble([store.row(t) for store in stores])
                          if stores[0].has(t) else None)

    @classmethod
    def disk_bytes(cls, cfg: Any, d: int, steps: int, row_bytes: int) -> int:
        """x_t and x_{t+1} (and g_t, with gradients) of the kept steps, ||u_t||^2 of
        every step."""
        rate = effective_rate(getattr(cfg, "sample_rate", 0.05),
                              getattr(cfg, "sample_min_steps", DEFAULT_MIN_STEPS), steps)
        kept = rate * steps
        return int(row_bytes * kept * (3 if gradients_option(cls, cfg) else 2) + 8 * steps)

    @classmethod
    def _verify_files(cls, directory: Path, steps: int, checksums: bool) -> dict[str, Any]:
        """One sample's files (a rank's, in an FSDP2 run); its sample.json."""
        foreign_sidecars(cls, directory, sub=SKETCHES)
        meta = check_sample(directory, steps)
        row = meta["d"] * np.dtype(meta["dtype"]).itemsize
        sizes = {ROWS: len(meta["iterates"]) * row, STEP_NORMS: 8 * steps}
        if meta["gradients"]:
            sizes[GRADS] = len(meta["kept"]) * row
        elif (directory / GRADS).exists():
            raise DamagedRun(f"{directory / GRADS}: present, but {SIDECAR} says no "
                             "gradients were kept")
        check_sizes(directory, sizes, optional=(STEP_NORMS,))
        return meta


def check_sizes(directory: Path, sizes: Mapping[str, int], optional: Sequence[str] = ()
                ) -> None:
    """Each file ``name`` of ``sizes`` in ``directory`` is exactly that many bytes (those
    in ``optional`` may be absent: runs from before the file)."""
    for name, want in sizes.items():
        path = Path(directory) / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if name in optional:
                continue
            raise DamagedRun(f"{path}: missing") from None
        if size != want:
            raise DamagedRun(f"{path}: {size} bytes, {want} expected"
                             + (" (truncated?)" if size < want else ""))


def check_sample(directory: Path, steps: int) -> dict[str, Any]:
    """``directory``'s sample.json, checked for what ``SampleStore`` and the measurement
    rely on: the format, d and dtype, ``steps`` the run's, the kept steps increasing
    among 0..steps-1 with a finite learning rate each, the stored iterates distinct
    among 0..steps, holding x_0, x_T and x_t, x_{t+1} of every kept step t. ``DamagedRun``
    naming the file and the fault otherwise."""
    path = Path(directory) / SIDECAR
    meta = read_sidecar_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DamagedRun(f"{path}: not a {FORMAT} sample")

    def ints(v: object, low: int, high: int) -> bool:
        return isinstance(v, list) and all(
            isinstance(t, int) and not isinstance(t, bool) and low <= t <= high for t in v)

    d, dtype = meta.get("d"), meta.get("dtype")
    bad = None
    if not (isinstance(d, int) and not isinstance(d, bool) and d >= 1):
        bad = "d"
    elif not (isinstance(dtype, str) and dtype in ("<f4", "<f8")):
        bad = "dtype"
    elif meta.get("steps") != steps or isinstance(meta.get("steps"), bool):
        raise DamagedRun(f"{path}: a sample of {meta.get('steps')!r} steps, the run took "
                         f"{steps}")
    elif not ints(meta.get("iterates"), 0, steps):
        bad = "iterates"
    elif not ints(meta.get("kept"), 0, steps - 1):
        bad = "kept"
    elif not (isinstance(meta.get("lr"), list) and len(meta["lr"]) == len(meta["kept"])
              and all(isinstance(v, int | float) and not isinstance(v, bool)
                      and math.isfinite(v) for v in meta["lr"])):
        bad = "lr"
    elif not isinstance(meta.get("gradients", False), bool):
        bad = "gradients"
    if bad is not None:
        raise DamagedRun(f"{path}: key {bad!r} missing or invalid")
    meta.setdefault("gradients", False)
    kept, iterates = meta["kept"], set(meta["iterates"])
    if len(iterates) != len(meta["iterates"]):
        raise DamagedRun(f"{path}: an iterate stored twice")
    if any(a >= b for a, b in zip(kept, kept[1:], strict=False)):
        raise DamagedRun(f"{path}: the kept steps are not increasing")
    missing = sorted({0, steps} - iterates) or [
        u for t in kept for u in (t, t + 1) if u not in iterates]
    if missing:
        raise DamagedRun(f"{path}: iterate x_{missing[0]} is not stored")
    return meta


def read_samples(parts: Parts) -> list[SampleStore]:
    """Every part's sample (mode sample's, or mode sketch's check sample), checked to
    keep the same steps, learning rates and iterates."""
    stores = [SampleStore(d) for d in parts.dirs]
    first = stores[0]
    for store in stores[1:]:
        if not (np.array_equal(store.kept, first.kept) and np.array_equal(
                store.lrs, first.lrs) and np.array_equal(store.iterates, first.iterates)
                and store.gradients == first.gradients):
            raise DamagedRun(f"{store.dir}: its sample differs from rank 0's")
    return stores
