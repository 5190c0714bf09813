"""The rank protocol of a run that other code trains (``RegularitySession``): what the
ranks share. One protocol for one process and for many: on one process (no
torch.distributed process group, or a group of one) every collective is a no-op that
returns this process's own values, as torch.distributed.checkpoint's wrapper does, so
the session has one code path.

Under DDP every rank holds every parameter and takes the same optimizer steps on its
own part of each global batch. So rank 0 alone records the trajectory (the leader),
while every rank keeps its own micro-batches and random states. After training the
leader drives the measurement and the other ranks (followers) serve it, in lockstep:

- ``load(x)``: the leader broadcasts x (a row of its trajectory) and every rank puts it
  into its parameters;
- ``losses(steps)``: every rank rebuilds l_t on its own micro-batches of each step, and
  one all_reduce adds them (the leader divides by the number of ranks, or not, as the
  framework's loss was normalised: ``rank_combine``).

Everything goes through a gloo group of the session's own (CPU tensors whatever the
training backend, and its own timeout), so a rank that dies makes every other rank's
next collective fail, and a rank that hangs makes it time out: no rank waits forever.
A rank's local failure is turned into a flag in the next collective, so every rank
leaves together with one clear error (``RankFailed``). ``agree`` (a monitored barrier,
then an all_gather of each rank's error) marks the points where every rank must
have succeeded: before measuring, and before the leader renames the run directory.

Under FSDP2 (DTensor parameters sharded on dim 0, e.g. Lightning's
``ModelParallelStrategy`` with ``fully_shard``) no rank holds every parameter, so every
rank records its own shard into the leader's partial directory (``trajectory/rank-N/``
and ``shards.json``, the layout of ``trajreg.record.shards``); the leader's record mode
sums the per-rank partial sums of D_t, a_t, s_t, and ``load(x)`` puts each rank's
entries of x into its shards (``trajreg.record.shards.put_local``). A forward pass is
then itself a collective, so every rank reads all of a command's micro-batches before
the first forward and the ranks agree on which steps are complete.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from trajreg.errors import UserError

LOAD, LOSSES, DONE, ABORT = 1, 2, 3, 4
CURVATURE = 5  # the followers join record.curvature's measure_rows in lockstep
_DTYPES = {0: torch.float32, 1: torch.float64}


class RankFailed(UserError):
    """Another rank of a data-parallel run failed or stopped answering."""


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


class Ranks:
    """This process's place in a run: ``rank`` of ``world``, and a gloo group
    (``timeout`` seconds per collective) for the session's collectives; one process
    (``world`` 1, no group): every collective returns this process's values."""

    def __init__(self, rank: int = 0, world: int = 1, group: Any = None,
                 timeout: float = 1800.0) -> None:
        self.rank, self.world, self.group, self.timeout = rank, world, group, timeout

    @classmethod
    def detect(cls, timeout: float) -> Ranks:
        """The ranks of the torch.distributed process group (every rank must call this at
        the same point: it creates a group); one process when there is none, or one of
        a single process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return cls(timeout=float(timeout))
        group = dist.new_group(backend="gloo",
                               timeout=datetime.timedelta(seconds=float(timeout)))
        return cls(dist.get_rank(), dist.get_world_size(), group, float(timeout))

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def single(self) -> bool:
        """One process: the collectives are no-ops."""
        return self.world == 1

    def _collective(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a collective; a peer that died or timed out becomes a ``RankFailed``."""
        try:
            return fn()
        except RankFailed:
            raise
        except (RuntimeError, ConnectionError) as exc:  # gloo: closed peer, timeout
            raise RankFailed(f"rank {self.rank}: another rank failed or stopped answering "
                             f"while {what} (waited at most {self.timeout:g} s): "
                             f"{_line(exc)}") from exc

    # ------------------------------------------------------------------ agreement

    def agree(self, what: str, error: BaseException | None = None,
              facts: Any = None) -> list[Any]:
        """Every rank arrives here (a monitored barrier names a rank that does not) and
        hands in its error (None: it succeeded) and ``facts``; when any rank failed,
        every rank raises (its own error, or ``RankFailed`` naming the failed ranks).
        Returns every rank's ``facts``."""
        import torch.distributed as dist

        if self.single:
            if error is not None:
                raise error
            return [facts]

        def gather() -> list:
            dist.monitored_barrier(group=self.group,
                                   timeout=datetime.timedelta(seconds=self.timeout),
                                   wait_all_ranks=True)
            every: list = [None] * self.world
            dist.all_gather_object(every, (None if error is None else _line(error), facts),
                                   group=self.group)
            return every

        every = self._collective(what, gather)
        failed = [(r, e) for r, (e, _) in enumerate(every) if e is not None]
        if failed:
            if error is not None:
                raise error
            raise RankFailed("; ".join(f"rank {r} failed while {what}: {e}" for r, e in failed))
        return [f for _, f in every]

    def broadcast_object(self, what: str, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        if self.single:
            return obj

        box = [obj]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0,
                                                                  group=self.group))
        return box[0]

    def allsum(self, what: str, values: np.ndarray) -> np.ndarray:
        """The elementwise sum over ranks of a float64 vector (identical on every rank)."""
        import torch.distributed as dist

        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).clone()
        if self.single:
            return t.numpy()
        self._collective(what, lambda: dist.all_reduce(t, group=self.group))
        return t.numpy()

    def allsum_checked(self, what: str, values: np.ndarray,
                       error: BaseException | None) -> np.ndarray:
        """``allsum`` of ``values``, with this rank's failure (``error``) handed on: when
        any rank failed, every rank raises, its own error or a ``RankFailed`` naming the
        failed ranks."""
        failed = np.zeros(self.world)
        failed[self.rank] = error is not None
        n = len(values)
        total = self.allsum(what, np.concatenate([np.asarray(values, dtype=np.float64),
                                                  failed]))
        which = np.flatnonzero(total[n:])
        if which.size:
            if error is not None:
                raise error
            raise RankFailed(f"rank {', '.join(map(str, which))} failed while {what} (its "
                             "own error says why)")
        return total[:n]

    def allmax(self, what: str, value: float) -> float:
        import torch.distributed as dist

        if self.single:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64)
        self._collective(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX,
                                                       group=self.group))
        return float(t[0])

    # ------------------------------------------------------------------ leader -> followers

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        # the group holds every rank: its rank 0 is global rank 0
        self._collective("measuring", lambda: dist.broadcast(tensor, src=0, group=self.group))
        return tensor

    def send(self, op: int, payload: np.ndarray | None = None, flag: int = 0) -> None:
        """The leader's command to the followers (``receive`` on each of them)."""
        if self.single:
            return
        if payload is None:
            self._broadcast(torch.tensor([op, 0, 0, flag], dtype=torch.int64))
            return
        if op == LOAD:
            x = torch.from_numpy(np.ascontiguousarray(payload))
            if x.dtype not in (torch.float32, torch.float64):
                x = x.to(torch.float64)
            code = 0 if x.dtype == torch.float32 else 1
        else:
            x, code = torch.from_numpy(np.asarray(payload, dtype=np.int64)), 2
        self._broadcast(torch.tensor([op, x.numel(), code, flag], dtype=torch.int64))
        self._broadcast(x.contiguous())

    def receive(self) -> tuple[int, torch.Tensor | None, int]:
        """A follower waits for the leader's next command: (op, payload, flag)."""
        op, n, code, flag = (int(v) for v in self._broadcast(torch.zeros(4, dtype=torch.int64)))
        if op in (DONE, ABORT, CURVATURE):  # no payload
            return op, None, flag
        payload = torch.empty(n, dtype=_DTYPES.get(code, torch.int64))
        return op, self._broadcast(payload), flag


def reshard(model: torch.nn.Module) -> None:
    """FSDP2: drop the whole parameters a forward pass left gathered (the root module
    keeps them after its forward), so that the next forward gathers the shards again."""
    import sys

    if "torch.distributed.fsdp" not in sys.modules:  # then no module is an FSDPModule
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state of an FSDP2 model as CPU tensors (a collective: every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # full and offloaded: plain CPU tensors
    return cast("dict[str, torch.Tensor]", get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
