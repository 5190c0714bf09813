"""The study directory: where everything lives, and what state each run is in.

Imported by both ``execute.py`` (which writes runs) and ``report.py`` (which reads
them); it imports neither, so the study modules form no cycle::

    study.yaml                      the study file as given, plus trajreg's version
    runs/<run_id>/                  finished run directories (``trajreg run`` layout)
    runs/.<run_id>.partial-*        a run being written (or killed while written)
    runs/<run_id>.failed.json       why a run failed (the study went on)
    runs/<run_id>.damaged-<time>/   a damaged run moved aside before it was run again
    progress/<run_id>               epoch of a run in flight (for the progress display)
    runs.csv, techniques.csv, sensitivity.csv, correlations.csv, report.html, figures/

A run's state is ``done`` (a readable summary; diverged runs included), ``damaged``
(its directory exists under the final name but its summary or metrics are missing
or unreadable), ``failed`` (a failure record) or ``pending``.
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import yaml

from trajreg.atomic import read_json, replace_atomic, write_json
from trajreg.errors import DamagedRun, UserError
from trajreg.run.summary import Summary, read_summary
from trajreg.train.config import read_yaml

STUDY_FILE = "study.yaml"
RUNS = "runs"
PROGRESS = "progress"
FAILED_SUFFIX = ".failed.json"
DAMAGED_TAG = ".damaged-"
METRICS = "metrics.parquet"

State = Literal["done", "damaged", "failed", "pending"]


def trajreg_version() -> str:
    """The installed trajreg's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return version("trajreg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def runs_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / RUNS


def run_path(study_dir: str | Path, run_id: str) -> Path:
    return runs_dir(study_dir) / run_id


def failed_path(study_dir: str | Path, run_id: str) -> Path:
    return runs_dir(study_dir) / f"{run_id}{FAILED_SUFFIX}"


@dataclass(frozen=True)
class RunRecord:
    """What the study directory says about one run."""

    state: State
    summary: Summary | None = None  # done runs
    reason: str = ""  # failed and damaged runs: why


def inspect_run(study_dir: str | Path, run_id: str) -> RunRecord:
    """The state of one run, its summary when it is done, the reason otherwise."""
    path = run_path(study_dir, run_id)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            return RunRecord("damaged", reason=f"run directory damaged: {path}: not a directory")
        try:
            summary = read_summary(path)
        except DamagedRun as exc:
            return RunRecord("damaged", reason=str(exc))
        if not (path / METRICS).is_file():
            return RunRecord("damaged",
                             reason=f"run directory damaged: {path / METRICS}: missing")
        return RunRecord("done", summary=summary)
    if failed_path(study_dir, run_id).is_file():
        return RunRecord("failed", reason=failure_reason(study_dir, run_id))
    return RunRecord("pending")


def run_state(study_dir: str | Path, run_id: str) -> State:
    """``done``, ``damaged``, ``failed`` or ``pending`` for one run of a study directory."""
    return inspect_run(study_dir, run_id).state


def failure_reason(study_dir: str | Path, run_id: str) -> str:
    path = failed_path(study_dir, run_id)
    try:
        record = read_json(path)
        return str(record["reason"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"failure record unreadable: {path} ({type(exc).__name__})"


def record_failure(study_dir: str | Path, run_id: str, reason: str, config: dict[str, Any],
                   trace: str = "") -> None:
    """Write ``runs/<run_id>.failed.json`` (atomically): the reason, traceback, config."""
    write_json(failed_path(study_dir, run_id),
               {"run_id": run_id, "reason": reason, "traceback": trace, "config": config})


def move_damaged(study_dir: str | Path, run_id: str) -> Path:
    """Rename a damaged run directory to ``runs/<run_id>.damaged-<time>`` (nothing a user
    recorded is deleted) so that the run can be run again under its own name."""
    src = run_path(study_dir, run_id)
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    dst = src.with_name(f"{run_id}{DAMAGED_TAG}{stamp}")
    n = 1
    while dst.exists():
        n += 1
        dst = src.with_name(f"{run_id}{DAMAGED_TAG}{stamp}-{n}")
    src.rename(dst)
    return dst


def clean_partials(study_dir: str | Path) -> int:
    """Remove what killed attempts left: partial run directories, temporary files and
    the progress files; the number of partial runs and temporary files removed."""
    n = 0
    base = runs_dir(study_dir)
    if base.is_dir():
        for path in base.glob(".*"):
            if ".partial-" in path.name or ".tmp-" in path.name:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                n += 1
    shutil.rmtree(Path(study_dir) / PROGRESS, ignore_errors=True)
    return n


def write_study_file(study_dir: str | Path, raw: dict[str, Any]) -> None:
    """``study.yaml``: the study file as given, plus the trajreg version writing it."""
    text = yaml.safe_dump({**raw, "trajreg_version": trajreg_version()}, sort_keys=False)
    replace_atomic(Path(study_dir) / STUDY_FILE, lambda tmp: tmp.write_text(text))


def read_study_file(study_dir: str | Path) -> dict[str, Any]:
    """The study file a study directory was run with (without the version line)."""
    path = Path(study_dir) / STUDY_FILE
    if not path.is_file():
        raise UserError(f"{study_dir}: not a study directory (no {STUDY_FILE})")
    raw = read_yaml(path, "study")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a study file (not a mapping)")
    raw = dict(raw)
    raw.pop("trajreg_version", None)
    return raw


def _normal(raw: dict[str, Any]) -> Any:
    # what study.yaml would hold: compare the files, not Python spellings of them
    return yaml.safe_load(yaml.safe_dump(raw, sort_keys=True))


def check_out_dir(study_dir: str | Path, raw: dict[str, Any], force: bool = False) -> None:
    """Refuse (``UserError``) to write a study into a directory that is neither new,
    empty, nor a directory of the same study file; ``force`` writes it anyway (finished
    runs of the same configs are kept; nothing there is deleted)."""
    path = Path(study_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path}: exists and is not a directory")
    if not path.exists() or force:
        return
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return
    if STUDY_FILE in entries:
        try:
            same = _normal(read_study_file(path)) == _normal(raw)
        except UserError:
            same = False
        if same:
            return
        raise UserError(f"--out {path}: holds a different study (its {STUDY_FILE} differs "
                        "from this study file); give another directory, or --force to "
                        "write this study there")
    raise UserError(f"--out {path}: not empty and not a study directory; give a new or "
                    "empty directory, or --force to write the study there")
