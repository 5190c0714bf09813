"""Which micro-batches make each optimizer step of a run that other code trains.

A micro-batch belongs to the first optimizer step taken after its forward pass began
(``begin``), so gradient accumulation and closures that run the forward inside
``optimizer.step`` (Lightning) are both attributed correctly. The micro-batches of
measured steps are kept, with the random state each one saw, in one append-only log
(``trajreg.integrations.batches``). Micro-batches whose gradients are cleared before a
step uses them (``zero_grad`` after a GradScaler skipped an overflowing step) are
dropped from the next step (``watch_clears``); a step taken with no micro-batch since
the previous one is in ``no_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajreg.integrations.batches import BatchLog


def rng_state() -> dict:
    """The global random state a forward pass draws from (CPU and CUDA)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


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


class MicroBatches:
    """The micro-batches of a run, step by step, and the kept ones' data (``log``)."""

    def __init__(self, directory: Path, combine: str) -> None:
        self.log = BatchLog(directory)
        self.combine = combine  # a step's loss from its micro-batches': mean or sum
        self.started = 0  # micro-batches whose forward began
        self.rngs: dict[int, dict | None] = {}  # random state of started, unfinished ones
        self.losses: list[float] = []  # the framework's loss of each micro-batch
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
        self.discarded = 0
        self.no_batch: set[int] = set()  # steps taken with no micro-batch of their own

    @property
    def steps(self) -> int:
        return len(self.step_bounds)

    # ------------------------------------------------------------------ during training

    def begin(self, keep: bool) -> None:
        """A micro-batch's forward pass is about to begin: keep the random state it sees
        when its step is measured (``keep``)."""
        self.rngs[self.started] = rng_state() if keep else None
        self.started += 1

    def pending(self) -> bool:
        """Whether the next ``end`` has a begun micro-batch to close."""
        return len(self.losses) in self.rngs

    def end(self, batch: Any, loss: float) -> None:
        """The micro-batch begun first and not yet ended: its batch (kept when its step is
        measured) and the loss the framework computed on it."""
        i = len(self.losses)
        rng = self.rngs.pop(i)
        if rng is not None:  # its step is measured
            # a copy of its own: torch.save of a view would write its whole base storage
            batch = map_tensors(batch, lambda t: t.detach().to("cpu", copy=True))
            self.log.append(i, (batch, rng))
        self.losses.append(float(loss))

    def watch_clears(self, params: list[torch.Tensor]) -> None:
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
        i = self.started - 1
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
            self.discarded += last - self._group
            for i in range(self._group, last):
                self.log.forget(i)
            self._group = last
        # every pending micro-batch is now this step's or dropped
        self._fired.clear()
        self._cleared.clear()

    def step_taken(self) -> None:
        """An optimizer step was taken: it closes the micro-batches begun since the last."""
        self._drop_discarded()
        if self._group == self.started:
            self.no_batch.add(self.steps)
        self.step_first.append(self._group)
        self.step_bounds.append(self.started)
        self._group = self.started

    def unhook(self) -> None:
        for probe in self._probes:
            probe.remove()
        self._probes = []

    # ------------------------------------------------------------------ after training

    def members(self, t: int) -> range:
        """The micro-batches of optimizer step t (without those discarded before it)."""
        return range(self.step_first[t], self.step_bounds[t])

    def combined(self, values: list[float]) -> float:
        if not values:
            return math.nan
        return float(np.sum(values) if self.combine == "sum" else np.mean(values))

    def step_losses(self) -> np.ndarray:
        """The framework's loss of every step, combined over its micro-batches."""
        return np.asarray([self.combined([self.losses[i] for i in self.members(t)
                                          if i < len(self.losses)])
                           for t in range(self.steps)], dtype=np.float64)

    def counts(self) -> bytes:
        """The number of micro-batches of every step (ranks compare them)."""
        return np.diff(self.step_bounds, prepend=0).tobytes()

    def read(self, t: int) -> list | None:
        """Step t's kept micro-batches and random states (None: one was begun but never
        ended, so its loss is unknown)."""
        loaded = []
        for i in self.members(t):
            record = self.log.read(i)
            if record is None:
                return None
            loaded.append(record)
        return loaded

    def loss(self, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any],
                                                              torch.Tensor],
             t: int, device: torch.device, loaded: list | None = None) -> float:
        """l_t at the model's parameters: ``loss_fn`` on step t's micro-batches, each with
        the random state it saw in training, combined (NaN: a micro-batch is missing)."""
        loaded = self.read(t) if loaded is None else loaded
        if loaded is None:
            return math.nan
        values = []
        for batch, rng in loaded:
            set_rng_state(rng)
            batch = map_tensors(batch, lambda x: x.to(device))
            values.append(float(loss_fn(model, batch).detach()))
        return self.combined(values)

    def close(self) -> None:
        """The log complete: its index written."""
        self.log.close()
