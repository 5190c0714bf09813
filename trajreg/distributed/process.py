"""How a rank process starts and ends.

A plain 2-rank gloo run that trains and simply returns exits non-zero in most runs on
a busy machine: the interpreter tears down while the process group (its gloo
threads and its connection to the other rank) is still alive, and the C++ runtime
aborts ("terminate called without an active exception"). ``clean_shutdown`` ends a
rank in order instead: a barrier (no rank tears down while another still talks to
it), ``destroy_process_group`` (the backend's threads joined), streams flushed.
Even so the interpreter's teardown aborted a rank now and then on a loaded machine
(the same message, SIGABRT; the launcher then stops the other ranks, and a finished run
fails): ``exit_rank`` leaves a rank whose work is done without that teardown.

``die_with_parent`` ties a launched process to its launcher (Linux
``PR_SET_PDEATHSIG``), so a ``trajreg run`` killed with SIGKILL takes its agent and
ranks with it instead of leaving them training.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Receive SIGKILL when the parent process ends (Linux; elsewhere a no-op). With
    ``expected_parent``, exit at once when the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # the parent died before prctl took effect


def clean_shutdown() -> None:
    """End this rank's part in the process group in order: barrier, destroy, flush."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()


def exit_rank(status: int = 0) -> None:
    """Leave this rank's process at once with ``status``, its work done and its files
    closed (after ``clean_shutdown``): streams flushed, no interpreter teardown, so no
    C++ thread of torch's is destroyed while still joinable."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
