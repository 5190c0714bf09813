"""Where a study's runs execute: in process, in local worker processes, on Dask.

Every executor has one method, ``map_unordered(fn, calls)``, yielding
``(call, result)`` as runs finish, where ``result`` is ``fn(*call)``'s return value or
the exception that stopped it (a crashed worker included). ``fn`` writes its run
directory itself, so workers must see the study directory: any local executor does;
a Dask cluster needs a shared file system (the usual set-up of a cluster's
workers, as with submitit or Ray).

- ``serial``: one run after another in this process (easiest to debug).
- ``process`` (default): ``--jobs N`` spawned worker processes (default: one per
  core). Each run uses the threads its config sets (``train.threads``; a study's
  default is 1), never a number derived from N, so its numbers do not depend on
  ``--jobs``. Workers die with the study process (Linux), so a killed study leaves
  no orphans writing into its directory.
- ``dask://HOST:PORT``: a running Dask scheduler (``pip install trajreg[dask]``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from trajreg.errors import UserError


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the study process dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _init_worker() -> None:
    _die_with_parent()
    # the parent may already be gone between fork/spawn and prctl
    if os.getppid() == 1:
        os._exit(1)


def _outcome(future: Any) -> Any:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - a dead worker is the run's failure
        return exc


class SerialExecutor:
    name = "serial"
    jobs = 1

    def map_unordered(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        for call in calls:
            try:
                yield call, fn(*call)
            except Exception as exc:  # noqa: BLE001 - reported as the run's failure
                yield call, exc

    def close(self) -> None:
        pass


class ProcessExecutor:
    name = "process"

    def __init__(self, jobs: int | None = None) -> None:
        self.jobs = max(1, jobs if jobs else usable_cores())
        # spawn, not fork: forking a process that has run torch (threads, OpenMP)
        # can deadlock the child
        self._pool = ProcessPoolExecutor(self.jobs, multiprocessing.get_context("spawn"),
                                         initializer=_init_worker)

    def map_unordered(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        futures = {self._pool.submit(fn, *call): call for call in calls}
        try:
            for future in as_completed(futures):
                yield futures[future], _outcome(future)
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    name = "dask"
    connect_timeout = "20s"  # how long to wait for the scheduler before giving up

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise UserError("--executor dask://...: Dask is not installed; "
                            "pip install 'trajreg[dask]'") from None
        try:
            self._client = Client(address, timeout=self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise UserError(f"--executor dask://{address}: cannot reach the Dask scheduler "
                            f"({exc})") from None
        self.address = address
        self.jobs = max(1, sum(self._client.nthreads().values()))

    def map_unordered(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        from distributed import as_completed as dask_completed

        # pure=False: a rerun after a failure must run again, not reuse a cached result
        futures = {self._client.submit(fn, *call, pure=False): call for call in calls}
        try:
            for future in dask_completed(list(futures)):
                yield futures[future], _outcome(future)
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._client.close()


Executor = SerialExecutor | ProcessExecutor | DaskExecutor


def make_executor(spec: str, jobs: int | None = None) -> Executor:
    """``serial``, ``process`` or ``dask://HOST:PORT`` (``--executor`` of ``trajreg study``)."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs: must be >= 1, got {jobs}")
    if spec == "serial":
        return SerialExecutor()
    if spec == "process":
        return ProcessExecutor(jobs)
    if spec.startswith("dask://"):
        address = spec[len("dask://"):]
        if not address:
            raise UserError("--executor dask://HOST:PORT: the scheduler address is missing")
        return DaskExecutor("tcp://" + address if "://" not in address else address)
    raise UserError(f"--executor: unknown executor {spec!r} "
                    "(serial, process or dask://HOST:PORT)")
