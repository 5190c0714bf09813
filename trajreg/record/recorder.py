"""Record an optimization trajectory from any torch.optim optimizer with one line.

The recorder hooks the optimizer's step (``register_step_pre_hook`` /
``register_step_post_hook``), the way Cockpit and BackPACK instrument training, so
the user's loop is unchanged::

    recorder = Recorder(optimizer, "run/trajectory")   # the one added line
    ...train as usual...
    recorder.close()

x_t is the concatenation of every parameter the optimizer updates, in param-group
order, taken just before step t; u_t = x_t - x_{t+1}; eta_t is the learning rate of
param group ``lr_group`` (group 0 by default) at step t, so v_t = u_t / eta_t is
well defined with per-group learning rates and weight decay.

What is kept is up to the record mode (``trajreg.record.modes``): ``store`` writes
every x_t to disk, ``replay`` streams D_t, a_t, s_t against a known x*, ``off``
attaches no hooks at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajreg.record.curvature import CurvatureRows
from trajreg.record.modes import MODE_NAMES, RecordMode, StepStream, get_mode
from trajreg.record.shards import Shard, write_shard_index

MODES = MODE_NAMES  # the names, for callers of the old constant


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters an optimizer updates, in param-group order, without duplicates."""
    seen: set[int] = set()
    params = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def local_part(p: torch.Tensor) -> torch.Tensor:
    """A parameter's entries held by this process: a DTensor's local shard (FSDP2), else
    the tensor itself (trajreg.distributed: each rank records its shard, never the whole)."""
    return p.to_local() if hasattr(p, "to_local") else p


def flat_params(params: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """x as one flat vector (written into ``out`` when given); of a sharded (DTensor)
    parameter, the local shard only (``local_part``)."""
    flat = [local_part(p).detach().reshape(-1) for p in params]
    if out is None:
        return torch.cat(flat)
    return torch.cat([f.to(out.device) for f in flat], out=out)


def flat_grads(params: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """The parameters' gradients ``p.grad`` as one flat vector in the order of
    ``flat_params`` (into ``out`` when given), zeros for a parameter whose grad is None;
    of a sharded (DTensor) gradient, the local shard."""
    grads = [None if p.grad is None else local_part(p.grad).detach().reshape(-1)
             for p in params]
    if out is None:
        if all(g is not None for g in grads):
            return torch.cat(grads)  # type: ignore[arg-type]
        ref = local_part(params[0])
        out = torch.empty(sum(local_part(p).numel() for p in params), dtype=ref.dtype,
                          device=ref.device)
    elif all(g is not None for g in grads):
        return torch.cat([g.to(out.device) for g in grads], out=out)  # type: ignore[union-attr]
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = local_part(p).numel()
        if g is None:
            out[offset : offset + n].zero_()
        else:
            out[offset : offset + n].copy_(g)
        offset += n
    return out


def set_flat_params(params: list[torch.Tensor], x: np.ndarray | torch.Tensor) -> None:
    """The inverse of ``flat_params``: copy the flat vector ``x`` into ``params`` in place.

    (``torch.nn.utils.vector_to_parameters`` would make the parameters views of ``x``,
    which may be a memory-mapped row of a trajectory store.)
    """
    flat = (x.detach().reshape(-1) if isinstance(x, torch.Tensor)
            else torch.from_numpy(np.array(x, copy=True)))
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


class Recorder:
    """Hooks an optimizer's steps and hands each step to a record mode.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        directory: where the mode writes its files (store: the trajectory).
        mode: a registered mode name or a ``RecordMode`` instance.
        x_star: the reference point, for a replay streaming against it.
        capacity: rows per trajectory segment file (store).
        lr_group: the param group whose learning rate is eta_t.
        sync_seconds: how often the store's sidecar is brought up to date.
        shard: the entries of x this process holds (FSDP2: ``shard_recorder``); None:
            the optimizer's parameters are all of x.
        curvature: ``(rate, seed)``: keep the rows ``record.curvature`` measures at a
            seeded sample of steps (``trajreg.record.curvature``) under ``directory``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, directory: str | Path | None = None,
                 *, mode: str | RecordMode = "store",
                 x_star: np.ndarray | torch.Tensor | None = None,
                 capacity: int = 4096, lr_group: int = 0, sync_seconds: float = 5.0,
                 shard: Shard | None = None,
                 curvature: tuple[float, int] | None = None) -> None:
        if isinstance(mode, str):
            if mode == "replay" and x_star is None:
                raise ValueError("mode 'replay' needs x_star, the reference point")
            mode = get_mode(mode).from_config()
        if not 0 <= lr_group < len(optimizer.param_groups):
            raise ValueError(f"lr_group: no param group {lr_group}")
        if shard is not None and not mode.shardable:
            raise ValueError(f"record mode {mode.name!r} cannot record a shard of the "
                             "parameters (FSDP2)")
        self.optimizer = optimizer
        self.mode = mode
        self.lr_group = lr_group
        self.params = optimizer_params(optimizer)
        self.d = sum(local_part(p).numel() for p in self.params)  # DTensor: the local shard
        self.dtype = self.params[0].dtype
        # no DTensor shard among the parameters: ``flat`` and ``grad_flat`` may take their
        # fast paths; flat views of the parameters for ``flat`` (``_flat_views``), rebuilt
        # when a parameter's storage changes, None where they cannot be used
        # (non-contiguous parameters, mixed devices)
        self._plain = not any(hasattr(p, "to_local") for p in self.params)
        self._views: list[torch.Tensor] | None = None
        self._view_ptrs: list[int] = []
        self.steps = 0
        self._handles: list[Any] = []
        self._closed = False
        if shard is not None and shard.local_d != self.d:
            raise ValueError(f"shard: {shard.local_d} entries, the optimizer's local "
                             f"parameters hold {self.d}")
        self.shard = shard
        options: dict[str, Any] = {} if shard is None else {"shard": shard}
        mode.open(self, Path(directory) if directory is not None else None, x_star=x_star,
                  capacity=capacity, sync_seconds=sync_seconds, **options)
        self.curvature: CurvatureRows | None = None
        if curvature is not None:
            if directory is None:
                raise ValueError("curvature rows need a directory")
            self.curvature = CurvatureRows(Path(directory), *curvature,
                                           keep=mode.keep if mode.sampled else None)
        if mode.hooks or self.curvature is not None:
            self._handles = [optimizer.register_step_pre_hook(self._pre_step),
                             optimizer.register_step_post_hook(self._post_step)]

    @property
    def stream(self) -> StepStream | None:
        """The replay mode's stream of D, a, s (None in other modes)."""
        return getattr(self.mode, "stream", None)

    def _flat_views(self) -> list[torch.Tensor] | None:
        """1-D views of the parameters' storage, made once and reused while every
        parameter keeps its storage (an optimizer updates in place). ``detach`` and
        ``reshape`` of an ``nn.Parameter`` go through ``__torch_function__`` and cost
        about 3 us each, most of a small model's per-step recording; the storage check
        (``data_ptr``) is cheap, and a view pins its storage, so an equal pointer is the
        same memory. A ``p.data = ...`` or a move to another device rebuilds them."""
        if not self._plain:
            return None
        ptrs = [p.data_ptr() for p in self.params]
        if ptrs != self._view_ptrs:
            views = [p.detach().reshape(-1) for p in self.params]
            same = all(v.data_ptr() == q for v, q in zip(views, ptrs, strict=True))
            devices = {v.device for v in views}
            self._views = views if same and len(devices) == 1 else None  # views, not copies
            self._view_ptrs = ptrs
        return self._views

    def flat(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The current parameters as one flat vector (into ``out`` when given)."""
        views = self._flat_views() if out is not None else None
        if views is not None and out is not None and out.device == views[0].device:
            return torch.cat(views, out=out)
        return flat_params(self.params, out=out)

    def grad_flat(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The gradients the optimizer is about to use (p.grad of every recorded
        parameter: after clipping, accumulation and AMP unscaling, which all happen
        before ``optimizer.step``) as one flat vector in the order of ``flat``, into
        ``out`` when given; zeros for a parameter whose grad is None."""
        if out is not None and self._plain and not torch.is_grad_enabled():
            grads = [p.grad for p in self.params]
            if all(g is not None and g.device == out.device for g in grads):
                # flat_grads' values without its per-tensor local_part, detach and device
                # move (plain tensors, no graph recorded here): a few us a parameter
                return torch.cat([torch.flatten(g) for g in grads], out=out)  # type: ignore[arg-type]
        return flat_grads(self.params, out=out)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[self.lr_group]["lr"])

    @torch.no_grad()  # autograd bookkeeping doubled the cost of the copy
    def _pre_step(self, optimizer, args, kwargs) -> None:
        if self.curvature is not None:
            self.curvature.pre_step(self, self.steps, self._lr())
        if self.mode.hooks:
            self.mode.pre_step(self, self.steps, self._lr())

    @torch.no_grad()
    def _post_step(self, optimizer, args, kwargs) -> None:
        if self.mode.hooks:
            self.mode.post_step(self, self.steps)
        if self.curvature is not None:
            self.curvature.post_step(self, self.steps)
        self.steps += 1

    def close(self) -> None:
        """Detach the hooks and let the mode seal its files (store: x_T, the sidecar)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if not self._closed:
            self._closed = True
            self.mode.close(self)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def shard_recorder(optimizer: torch.optim.Optimizer, trajectory: str | Path, *,
                   mode: RecordMode, rank: int, world: int, **options: Any) -> Recorder:
    """Rank ``rank`` of ``world`` records its shard of x (FSDP2: DTensor parameters
    sharded on dim 0) into ``trajectory/rank-NNNNN/``; rank 0 also writes the index of
    every rank's shard (``trajreg.record.shards``; computed from the global shapes, no
    collective). The record mode measures the parts together after training.
    ``options``: the ``Recorder``'s."""
    params = optimizer_params(optimizer)
    shard = Shard.of(params, rank, world)
    if rank == 0:
        write_shard_index(Path(trajectory), params, world)
    return Recorder(optimizer, Path(trajectory) / shard.dir, mode=mode, shard=shard,
                    **options)
