"""Run a study: every run of its grid, resumably, on any executor; then the report.

Study directory::

    study.yaml              the study file as given, plus trajreg's version
    runs/<run_id>/          finished run directories (``trajreg run`` layout)
    runs/<run_id>.failed.json   why a run failed (the study went on)
    progress/<run_id>       epoch of a run in flight (for the progress display)
    runs.csv, techniques.csv, report.html, figures/   the report (``report.py``)

A run directory appears under its final name only when complete (written as
``.<run_id>.partial-*`` and renamed), so a study killed at any point and started
again finds exactly the finished runs, removes the partial ones, and runs the rest.
Runs are keyed by a hash of their resolved config: a changed study file reuses
every run it still asks for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trajreg.atomic import replace_atomic
from trajreg.errors import UserError
from trajreg.study.executors import Executor, make_executor
from trajreg.study.layout import (
    FAILED_SUFFIX,
    clean_partials,
    failure_reason,
    record_failure,
    run_state,
    runs_dir,
    write_study_file,
)
from trajreg.study.report import write_report
from trajreg.study.spec import Study, load_study


@dataclass
class StudyResult:
    directory: Path
    done: list[str] = field(default_factory=list)  # finished runs (diverged included)
    failed: dict[str, str] = field(default_factory=dict)  # run_id -> reason
    ran: list[str] = field(default_factory=list)  # run by this call (not resumed)
    workers: dict[str, str] = field(default_factory=dict)  # run_id -> "host:pid" that ran it


def execute_run(config: dict[str, Any], study_dir: str, run_id: str,
                threads: int | None = None) -> dict[str, Any]:
    """Train and analyse one run of a study into ``runs/<run_id>``; never raises for
    the run's own failure: it is written to ``runs/<run_id>.failed.json`` instead.

    Top-level and picklable: executors ship it to worker processes and Dask workers.
    """
    import torch

    from trajreg.run.runner import run
    from trajreg.train.config import load_config

    if threads is not None:
        torch.set_num_threads(threads)
    base = runs_dir(Path(study_dir))
    out = base / run_id
    progress = Path(study_dir) / "progress" / run_id
    me = f"{socket.gethostname()}:{os.getpid()}"
    if (out / "summary.json").is_file():  # finished by an earlier attempt
        return {"run_id": run_id, "status": "done", "worker": me}
    cfg = load_config(config)

    def on_epoch(epoch: int) -> None:
        with contextlib.suppress(OSError):
            replace_atomic(progress, lambda tmp: tmp.write_text(f"{epoch} {cfg.train.epochs}"))

    try:
        _, summary = run(cfg, out, progress=False, on_epoch=on_epoch)
    except Exception as exc:  # noqa: BLE001 - the study records it and goes on
        if (out / "summary.json").is_file():  # a concurrent attempt finished it
            return {"run_id": run_id, "status": "done", "worker": me}
        reason = f"{type(exc).__name__}: {exc}"
        record_failure(Path(study_dir), run_id, reason, config, traceback.format_exc())
        return {"run_id": run_id, "status": "failed", "reason": reason, "worker": me}
    finally:
        with contextlib.suppress(OSError):
            progress.unlink()
    return {"run_id": run_id, "status": "diverged" if summary.diverged else "done",
            "worker": me}


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold ``STUDY_DIR/.lock`` so two study processes never write one directory."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{study_dir}: another trajreg study is running in this "
                            "directory") from None
        yield


class _Progress:
    """One display for the whole study: runs done of total, epochs of runs in flight.

    A thread polls ``progress/`` (workers write their epoch there, whichever machine
    they run on) and updates the bar; silent when not a terminal.
    """

    def __init__(self, study_dir: Path, total: int, done: int, enabled: bool | None) -> None:
        self.dir = study_dir / "progress"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bar = tqdm(total=total, initial=done, desc="study", unit="run",
                        disable=None if enabled is None else not enabled)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if not self.bar.disable:
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            parts = []
            for path in sorted(self.dir.iterdir()):
                with contextlib.suppress(OSError, ValueError):
                    epoch, epochs = path.read_text().split()
                    parts.append(f"{path.name[:6]} epoch {epoch}/{epochs}")
            self.bar.set_postfix_str("; ".join(parts[:3]), refresh=True)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.close()


def run_study(study: Study | str | Path | dict, out: str | Path, *, executor: str = "process",
              jobs: int | None = None, retry_failed: bool = False, report: bool = True,
              progress: bool | None = None) -> StudyResult:
    """Run every unfinished run of ``study`` into ``out``, then write the report.

    Finished runs are kept; failed ones are retried only with ``retry_failed``.
    """
    if not isinstance(study, Study):
        study = load_study(study)
    study_dir = Path(out)
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError(f"--out {study_dir}: exists and is not a directory")
    if not executor.startswith("dask://"):  # local runs: this machine's devices
        from trajreg.train.loop import require_device

        for device in sorted({spec.config["train"]["device"] for spec in study.runs}):
            require_device(device)
    # before anything is written: a bad executor or an unreachable cluster stops here
    pool = make_executor(executor, jobs)
    try:
        with study_lock(study_dir):
            return _run_study(study, study_dir, pool, retry_failed, report, progress)
    finally:
        pool.close()


def _run_study(study: Study, study_dir: Path, pool: Executor, retry_failed: bool, report: bool,
               progress: bool | None) -> StudyResult:
    runs_dir(study_dir).mkdir(exist_ok=True)
    clean_partials(study_dir)
    write_study_file(study_dir, study.raw)
    result = StudyResult(study_dir)
    todo = []
    for spec in study.runs:
        state = run_state(study_dir, spec.run_id)
        if state == "failed" and retry_failed:
            (runs_dir(study_dir) / f"{spec.run_id}{FAILED_SUFFIX}").unlink()
            state = "pending"
        if state == "done":
            result.done.append(spec.run_id)
        elif state == "failed":
            result.failed[spec.run_id] = failure_reason(study_dir, spec.run_id)
        else:
            todo.append(spec)
    display = _Progress(study_dir, len(study.runs), len(study.runs) - len(todo), progress)
    try:
        threads = getattr(pool, "threads", None)
        # absolute: Dask workers need not share this process's working directory
        calls = [(spec.config, str(study_dir.resolve()), spec.run_id, threads)
                 for spec in todo]
        for call, outcome in pool.map_unordered(execute_run, calls):
            rid = call[2]
            if isinstance(outcome, BaseException):  # the worker itself died
                reason = f"{type(outcome).__name__}: {outcome}"
                record_failure(study_dir, rid, reason, call[0])
                outcome = {"run_id": rid, "status": "failed", "reason": reason}
            result.ran.append(rid)
            result.workers[rid] = outcome.get("worker", "")
            if outcome["status"] == "failed":
                result.failed[rid] = outcome["reason"]
            else:
                result.done.append(rid)
            display.advance()
    finally:
        display.close()
    shutil.rmtree(study_dir / "progress", ignore_errors=True)
    if report:
        write_report(study_dir, study)
    return result
