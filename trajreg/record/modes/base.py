"""The record-mode protocol: how a mode records during training and measures after it.

A record mode is one class behind this small interface, registered by name in
``trajreg.record.modes.MODES``. The recorder (``trajreg.record.Recorder``) owns the
optimizer hooks and calls the mode on every step; after training, whoever trained
the run (``trajreg run``'s runner, or an integration's session) hands the mode a
``MeasureContext`` that can evaluate losses, and the mode returns a ``Measured``.

Adding a mode is one module defining a ``RecordMode`` subclass plus one line in
the registry (see docs/record-modes.md).

Planning. Before training, whoever trains the run calls::

    mode.plan(steps: int | None, analysis: AnalysisConfig | None, *,
              words: Mapping[str, str] | None = None) -> None

``steps`` is T, the number of optimizer steps the run will take, or None when it is
not known (an integration's session in a hand-written loop whose user did not say):
then the one-pass modes keep their plain rate and warn. ``analysis`` is the run's
``AnalysisConfig`` (None: the defaults). ``words`` says how the caller's API spells the
mode's options, for every warning the mode gives, before training and after measuring
(``mode.words`` keeps them; ``trajreg.run.runner.write_analysis(..., words=mode.words)``
passes them to the analysis' warnings). Its keys are the mode constructors' argument
names, plus ``steps``:

    =================  =================================  ===============================
    key                what                               default (``CONFIG_WORDS``)
    =================  =================================  ===============================
    steps              how to say T                       train.epochs
    rate               SampleMode(rate=...)               record.sample_rate
    min_steps          SampleMode(min_steps=...)          record.sample_min_steps
    dim                SketchMode(dim=...)                record.sketch_dim
    check_rate         SketchMode(check_rate=...)         record.sketch_sample_rate
    check_min_steps    SketchMode(check_min_steps=...)    record.sketch_check_steps
    =================  =================================  ===============================

A key left out keeps its default; the values are used verbatim inside sentences
("raise record.sample_rate", "give RegularitySession(steps=...)"). ``plan`` is the only
place a mode may change how it samples (a one-pass mode fixes its effective rate from
T there); it must be called before ``open`` (training), at most once per run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from trajreg.errors import DamagedRun
from trajreg.record.measured import Measured
from trajreg.record.shards import Shard
from trajreg.record.store import read_sidecar_json

__all__ = ["CONFIG_WORDS", "MeasureContext", "RecordMode", "Recording", "Shard",
           "read_sidecar_json", "with_words"]


# How ``trajreg run``'s config spells the modes' options (see the module docstring).
CONFIG_WORDS: Mapping[str, str] = {
    "steps": "train.epochs",
    "rate": "record.sample_rate",
    "min_steps": "record.sample_min_steps",
    "dim": "record.sketch_dim",
    "check_rate": "record.sketch_sample_rate",
    "check_min_steps": "record.sketch_check_steps",
}


def with_words(words: Mapping[str, str] | None) -> dict[str, str]:
    """``CONFIG_WORDS`` overridden by ``words`` (unknown keys are an error: a typo would
    otherwise leave a config key in a session user's warning)."""
    unknown = set(words or ()) - set(CONFIG_WORDS)
    if unknown:
        raise ValueError(f"plan(words=...): unknown keys {sorted(unknown)} "
                         f"(allowed: {', '.join(CONFIG_WORDS)})")
    return {**CONFIG_WORDS, **(words or {})}


class MeasureContext(Protocol):
    """What a mode may ask of the code that trained the run, after training.

    ``directory`` is the run directory (a mode's files are under it); ``steps`` is T.
    ``load(x)`` puts the flat parameter vector x into the evaluation model (buffers
    stay the trained model's); ``step_losses(ts)`` is l_t at the loaded parameters for
    each step t in ``ts``, with step t's own minibatch, model mode and random state;
    ``f_star(k)`` is F(x_k) (the loaded parameters are x_k); ``replay(k)`` re-executes
    the run and measures it against x_k (only ``trajreg run`` can; integrations raise
    a UserError). ``interpolated_losses(alphas, x0, x_star)`` is F, evaluated as F_k
    is, at (1 - alpha) x0 + alpha x* for each alpha (the reference loop interpolates
    batch-norm running statistics the same way between the initial and the final
    ones). ``mli`` says whether the measurement evaluates it (the ``mli`` summary key):
    False skips it (``record.interpolation`` false, the sensitivity analysis' second
    reference, an FSDP2 session whose ranks hold shards); a context that sets it False
    may then raise from ``interpolated_losses``.
    """

    directory: Path
    steps: int
    mli: bool

    def load(self, x: np.ndarray) -> None: ...

    def step_losses(self, steps: Sequence[int]) -> np.ndarray: ...

    def f_star(self, k: int) -> float: ...

    def replay(self, k: int) -> Measured: ...

    def interpolated_losses(self, alphas: Sequence[float], x0: np.ndarray,
                            x_star: np.ndarray) -> np.ndarray: ...


class Recording(Protocol):
    """What a mode reads of the recorder that calls it (``trajreg.record.Recorder``):
    ``d`` entries of the local flat vector (under FSDP2 the process's shard), their
    ``dtype``, the optimizer's ``params``, the ``steps`` taken so far, the flat
    parameters and gradients (into ``out`` when given)."""

    d: int
    dtype: torch.dtype
    params: list[torch.Tensor]
    steps: int

    def flat(self, out: torch.Tensor | None = None) -> torch.Tensor: ...

    def grad_flat(self, out: torch.Tensor | None = None) -> torch.Tensor: ...


class RecordMode(ABC):
    """One way of recording a trajectory (see the module docstring).

    Class attributes:
        name: the registry name (``record.mode`` in a config).
        hooks: whether the mode needs the optimizer's step hooks at all.
        reanalyse: reference points (``final``, ``best``) the mode can measure against
            after training without retraining.
        cost: its memory and disk, in words (README's table and docs).
        gradients: whether the mode also records the minibatch gradient g_t of each
            step (``RecordConfig.gradients``; the class value is the mode's default).
        sampled: whether the mode measures steps exactly at a random sample of them
            (the summary then gets the sample's intervals). Steps missing from another
            mode's measurement (an integration's step without a micro-batch) are no
            random sample.
        keeps_trajectory: whether the mode keeps what it measures from on disk during
            training, so that the run is measured afterwards without re-executing it:
            what a run trained by other code (an integration's session) needs.
        shardable: whether the mode records a shard of x (``open(..., shard=...)``):
            under FSDP2 every rank records its part and the measurement adds the parts.
        reexecutes: whether measuring re-executes the run in one process (replay), which
            only trajreg's own single-process loop can.
        measures: whether the mode measures anything at all (the regularity analysis).
    """

    name: ClassVar[str]
    hooks: bool = True  # a class default; a mode instance may switch it off
    reanalyse: ClassVar[tuple[str, ...]] = ("final",)
    cost: ClassVar[str] = ""
    gradients: bool = False
    sampled: ClassVar[bool] = False
    keeps_trajectory: ClassVar[bool] = False
    shardable: ClassVar[bool] = False
    reexecutes: ClassVar[bool] = False
    measures: ClassVar[bool] = True
    # how the options are spelled in warnings (set by ``plan``; the module docstring)
    words: Mapping[str, str] = CONFIG_WORDS

    @classmethod
    def from_config(cls, cfg: Any = None, seed: int = 0) -> RecordMode:
        """The mode with the options of a ``RecordConfig`` (None: the defaults); ``seed``
        is the run's seed, from which a mode derives its own randomness."""
        mode = cls()
        mode.gradients = gradients_option(cls, cfg)
        return mode

    def plan(self, steps: int | None, analysis: Any, *,
             words: Mapping[str, str] | None = None) -> None:
        """Before training: the number of steps the run will take (None: unknown) and its
        ``AnalysisConfig`` (None: the defaults); ``words``: how the caller spells the
        mode's options (the module docstring). A mode may fix how it samples, warn, or
        refuse (``ConfigError``) a reference point it cannot measure against. Subclasses
        call this first: it keeps ``words``."""
        self.words = with_words(words)

    # ------------------------------------------------------------ during training
    def open(self, rec: Recording, directory: Path | None, *, shard: Shard | None = None,  # noqa: B027 - optional hook
             **options: Any) -> None:
        """Prepare to record the optimizer of ``rec`` (files under ``directory``).
        ``shard``: the recorder holds a part of x (FSDP2), these entries of it; only a
        ``shardable`` mode is given one (None: the recorder holds all of x)."""

    def keep(self, step: int) -> bool:
        """Whether step ``step`` is measured (its minibatch and random state must be kept)."""
        return True

    def pre_step(self, rec: Recording, step: int, lr: float) -> None:  # noqa: B027 - optional hook
        """Just before optimizer step ``step``: the parameters are x_t."""

    def post_step(self, rec: Recording, step: int) -> None:  # noqa: B027 - optional hook
        """Just after optimizer step ``step``: the parameters are x_{t+1}."""

    def close(self, rec: Recording) -> None:  # noqa: B027 - optional hook
        """Training is over: the parameters are x_T; seal the files."""

    # ------------------------------------------------------------ after training
    @abstractmethod
    def measure(self, ctx: MeasureContext, k: int) -> Measured | None:
        """The per-step quantities against x* = x_k (None: the mode measures nothing)."""

    def can_reanalyse(self, reference: str) -> bool:
        return reference in self.reanalyse

    # ------------------------------------------------------------ a finished run's files
    own_files: ClassVar[tuple[str, ...]] = ()  # the sidecars the mode writes to trajectory/

    @classmethod
    def verify(cls, directory: Path, steps: int, checksums: bool = True) -> None:
        """Check the files the mode left in ``directory`` (a finished run's
        ``trajectory/``) for a run of ``steps`` optimizer steps, before it is analysed
        again: their structure and sizes and, with ``checksums``, their data against
        the checksums the mode wrote with them. ``DamagedRun`` ("FILE: why") on any
        fault; never another exception for a damaged file. ``rundir.verify_run_dir``
        calls it. This default is a mode that keeps no files: no other mode's sidecar
        may be there (a config.yaml whose record.mode was edited)."""
        foreign_sidecars(cls, directory)

    @classmethod
    def rows(cls, directory: Path) -> Callable[[int], np.ndarray | None]:
        """x_t by step t from the files the mode left in ``directory`` (a run's
        ``trajectory/``), whole vectors (an FSDP2 run's parts put together); None for
        an iterate the mode did not keep. This default keeps none."""
        return lambda t: None

    @classmethod
    def disk_bytes(cls, cfg: Any, d: int, steps: int, row_bytes: int) -> int:
        """What the mode writes under trajectory/ for a run of ``steps`` steps of ``d``
        parameters whose rows take ``row_bytes`` (``cfg``: the ``RecordConfig``). This
        default writes nothing."""
        return 0


# every mode's sidecar in trajectory/ (store, sample and sketch, an FSDP2 run's index)
SIDECARS = ("trajectory.json", "sample.json", "shards.json")


def foreign_sidecars(cls: type[RecordMode], directory: Path, sub: str | None = None) -> None:
    """``DamagedRun`` when ``directory`` holds a sidecar (or the subdirectory ``sub``)
    that mode ``cls`` does not write: the run was recorded in another mode."""
    for name in [n for n in SIDECARS if n not in cls.own_files] + ([sub] if sub else []):
        path = Path(directory) / name
        if path.exists():
            raise DamagedRun(f"{path}: written by another record mode than {cls.name}, "
                             f"the mode config.yaml names")


def gradients_option(cls: type[RecordMode], cfg: Any) -> bool:
    """``record.gradients`` of a ``RecordConfig`` (None or no config: the mode's default)."""
    value = getattr(cfg, "gradients", None)
    return bool(cls.gradients) if value is None else bool(value)
