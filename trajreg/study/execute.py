"""Run a study: every run of its grid, resumably, on any executor; then the report.

The study directory's layout is ``layout.py``. A run directory appears under its
final name only when complete (written as ``.<run_id>.partial-*`` and renamed), so a
study killed at any point and started again finds exactly the finished runs, removes
the partial ones, and runs the rest. A run directory that is there but damaged (a
truncated summary.json, a missing metrics.parquet) is moved aside to
``runs/<run_id>.damaged-<time>`` and run again; nothing is deleted.

Every run's config sets ``train.threads`` (a checkpoint series' ``series.threads``;
the study's default is 1), so a run's id and numbers do not depend on ``--jobs``;
executors never change it. A checkpoint series is measured (``trajreg checkpoints``)
into its run directory as a run is trained into its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from trajreg.atomic import replace_atomic
from trajreg.errors import UserError
from trajreg.run.summary import Summary
from trajreg.study.executors import Executor, make_executor
from trajreg.study.layout import (
    PROGRESS,
    check_out_dir,
    clean_partials,
    failed_path,
    inspect_run,
    move_damaged,
    record_failure,
    run_path,
    runs_dir,
    write_study_file,
)
from trajreg.study.spec import Study, is_series, load_study


@dataclass
class StudyResult:
    """What one ``run_study`` call found and did."""

    directory: Path
    total: int = 0  # runs in the study
    done: list[str] = field(default_factory=list)  # finished runs (diverged included)
    failed: dict[str, str] = field(default_factory=dict)  # run_id -> reason
    ran: list[str] = field(default_factory=list)  # run by this call (not resumed)
    workers: dict[str, str] = field(default_factory=dict)  # run_id -> "host:pid" that ran it
    moved_damaged: dict[str, Path] = field(default_factory=dict)  # run_id -> where it went
    partials_removed: int = 0  # partial runs and temporary files of killed attempts
    diverged: list[str] = field(default_factory=list)  # finished runs that diverged
    report: dict[str, Path] | None = None  # the report's files, when written


def measure_series(config: dict[str, Any], out: Path) -> Summary:
    """Measure one checkpoint series of a study (its run config's ``series`` section,
    ``spec._series_config``) into the run directory ``out``, on its own threads."""
    import torch

    from trajreg.checkpoints import CheckpointOptions, measure_checkpoints

    s = config["series"]
    torch.set_num_threads(s["threads"])  # as a run applies train.threads
    _, summary = measure_checkpoints(
        s["paths"], out, steps=s.get("steps"), config=s.get("config"), entry=s.get("entry"),
        text=s.get("text"), tokens=s.get("tokens"), n_batches=s["batches"],
        batch_size=s["batch_size"], block_size=s["block_size"],
        options=CheckpointOptions.from_dict(s["options"]), progress=False)
    return summary


def execute_run(config: dict[str, Any], study_dir: str, run_id: str) -> dict[str, Any]:
    """Train and analyse one run of a study (or measure a checkpoint series) into
    ``runs/<run_id>``; never raises for the run's own failure: it is written to
    ``runs/<run_id>.failed.json`` instead.

    Top-level and picklable: executors ship it to worker processes and Dask workers.
    The run applies its own ``train.threads`` (a series its ``threads``).
    """
    from trajreg.distributed.launch import run  # one process, or N (train.distributed)
    from trajreg.train.config import load_config

    out = run_path(study_dir, run_id)
    progress = Path(study_dir) / PROGRESS / run_id
    me = f"{socket.gethostname()}:{os.getpid()}"
    if inspect_run(study_dir, run_id).state == "done":  # finished by an earlier attempt
        return {"run_id": run_id, "status": "done", "worker": me}

    def work() -> Summary:
        if is_series(config):
            return measure_series(config, out)
        cfg = load_config(config)

        def on_epoch(epoch: int) -> None:
            with contextlib.suppress(OSError):
                replace_atomic(progress,
                               lambda tmp: tmp.write_text(f"{epoch} {cfg.train.epochs}"))

        return run(cfg, out, progress=False, on_epoch=on_epoch)[1]

    try:
        summary = work()
    except Exception as exc:  # noqa: BLE001 - the study records it and goes on
        if inspect_run(study_dir, run_id).state == "done":  # a concurrent attempt won
            return {"run_id": run_id, "status": "done", "worker": me}
        reason = f"{type(exc).__name__}: {exc}"
        record_failure(study_dir, run_id, reason, config, traceback.format_exc())
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


class Progress:
    """The study's progress: one bar on a terminal (runs done of total, the epochs of
    runs in flight, polled from ``progress/`` where workers write them, whichever
    machine they run on); without a terminal one line per finished run, so a log of a
    long study shows it advancing; nothing when ``mode`` is ``"off"``."""

    def __init__(self, study_dir: Path, total: int, done: int, mode: str,
                 stream: TextIO | None = None) -> None:
        self.dir = study_dir / PROGRESS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mode, self.total, self.done = mode, total, done
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.bar = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if mode == "bar":
            self.bar = tqdm(total=total, initial=done, desc="study", unit="run",
                            file=self.stream)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            parts = []
            for path in sorted(self.dir.iterdir()):
                with contextlib.suppress(OSError, ValueError):
                    epoch, epochs = path.read_text().split()
                    parts.append(f"{path.name[:6]} epoch {epoch}/{epochs}")
            assert self.bar is not None
            self.bar.set_postfix_str("; ".join(parts[:3]), refresh=True)

    def advance(self, run_id: str, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "lines":
            elapsed = time.monotonic() - self.started
            print(f"study: {self.done}/{self.total} runs finished ({run_id} {status}; "
                  f"{elapsed:.0f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.bar is not None:
            self.bar.close()


def progress_mode(progress: bool | None, stream: TextIO | None = None) -> str:
    """``bar`` (a terminal), ``lines`` (no terminal) or ``off``: ``progress=None`` picks
    by whether ``stream`` (default stderr) is a terminal, True forces the bar."""
    if progress is False:
        return "off"
    if progress is True:
        return "bar"
    stream = stream or sys.stderr
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


def run_study(study: Study | str | Path | dict[str, Any], out: str | Path, *,
              executor: str = "process", jobs: int | None = None,
              retry_failed: bool = False, report: bool = True, progress: bool | None = None,
              force: bool = False) -> StudyResult:
    """Run every unfinished run of ``study`` into ``out``, then write the report.

    Finished runs are kept; failed ones are retried only with ``retry_failed``;
    damaged ones are moved aside and run again. ``out`` must be new, empty, or a
    directory of the same study file (``force`` writes into any directory; nothing
    there is deleted). Raises ``UserError`` for bad input before any run starts.
    """
    if not isinstance(study, Study):
        study = load_study(study)
    study_dir = Path(out)
    check_out_dir(study_dir, study.raw, force)
    if not executor.startswith("dask://"):  # local runs: this machine's devices
        from trajreg.train.loop import require_device

        for device in sorted({spec.config["series"]["options"]["device"]
                              if is_series(spec.config) else spec.config["train"]["device"]
                              for spec in study.runs}):
            require_device(device)
    # before anything is written: a bad executor or an unreachable cluster stops here
    pool = make_executor(executor, jobs)
    try:
        with study_lock(study_dir):
            return _run_study(study, study_dir, pool, retry_failed, report,
                              progress_mode(progress))
    finally:
        pool.close()


def _run_study(study: Study, study_dir: Path, pool: Executor, retry_failed: bool,
               report: bool, mode: str) -> StudyResult:
    runs_dir(study_dir).mkdir(exist_ok=True)
    result = StudyResult(study_dir, total=len(study.runs))
    result.partials_removed = clean_partials(study_dir)
    write_study_file(study_dir, study.raw)
    todo = []
    for spec in study.runs:
        record = inspect_run(study_dir, spec.run_id)
        state = record.state
        if state == "damaged":
            result.moved_damaged[spec.run_id] = move_damaged(study_dir, spec.run_id)
            state = "pending"
        if state == "failed" and retry_failed:
            failed_path(study_dir, spec.run_id).unlink()
            state = "pending"
        if state == "done":
            result.done.append(spec.run_id)
            if record.summary is not None and record.summary.diverged:
                result.diverged.append(spec.run_id)
        elif state == "failed":
            result.failed[spec.run_id] = record.reason
        else:
            todo.append(spec)
    display = Progress(study_dir, len(study.runs), len(study.runs) - len(todo), mode)
    try:
        # absolute: Dask workers need not share this process's working directory
        calls = [(spec.config, str(study_dir.resolve()), spec.run_id) for spec in todo]
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
                if outcome["status"] == "diverged":
                    result.diverged.append(rid)
            display.advance(rid, outcome["status"])
    finally:
        display.close()
    clean_partials(study_dir)  # the progress files; no partial run is left by now
    if report:
        from trajreg.study.report import write_report  # scipy, matplotlib: at the end only

        result.report = write_report(study_dir, study)
    return result
