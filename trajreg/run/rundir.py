"""The run directory: its layout, and the one module that writes and reads it.

Layout (the contract ``trajreg analyze``, reports and integrations rely on)::

    config.yaml        the resolved config, with trajreg and torch versions
    metrics.parquet    one row per measured optimizer step
    summary.json       the analysis and run facts (``trajreg.run.summary.Summary``)
    *.png              figures (``figures.FIGURES``)
    final_state.pt     the model's state at the end (parameters and buffers)
    trajectory/        the record mode's files (store: every iterate x_t)

Run directories are written under a temporary name, renamed when complete.

A directory named ``.NAME.partial-*`` is an unfinished run; a directory without
that prefix always holds a complete run. Files written into a finished run (a
new analysis) go through a temporary name and ``os.replace`` too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from trajreg.atomic import read_json, replace_atomic, write_json
from trajreg.errors import ConfigError, DamagedRun, UserError
from trajreg.run.summary import FILE as SUMMARY
from trajreg.run.summary import Summary, read_summary, write_summary
from trajreg.train.config import AnalysisConfig, RunConfig, load_config

CONFIG = "config.yaml"
METRICS = "metrics.parquet"
FINAL_STATE = "final_state.pt"
TRAJECTORY = "trajectory"
TRAINLOG = "trainlog.parquet"  # every step's loss, epoch, lr where metrics hold a sample
COMPLETE_MARK = SUMMARY  # the last file a run writes

__all__ = ["COMPLETE_MARK", "RunDirConfig", "atomic_dir", "partial_dir", "read_config",
           "read_final_state", "read_json", "read_metrics", "read_summary", "replace_atomic",
           "require_run_dir", "versions", "write_config", "write_final_state", "write_json",
           "write_outputs", "write_parquet", "write_summary"]


def partial_dir(out: Path) -> Path:
    """A fresh ``.NAME.partial-*`` directory beside ``out``, to ``os.rename`` to ``out``
    once complete (``atomic_dir`` does both; the integrations, whose runs span many
    framework callbacks, call the two steps themselves)."""
    out = Path(out)
    if out.exists():
        raise UserError(f"output directory already exists: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; rename it to ``out`` on success.

    On an exception the temporary directory is removed and ``out`` is not created.
    """
    tmp = partial_dir(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, out)


def versions() -> dict[str, str]:
    """The trajreg and torch versions, for config.yaml."""
    try:
        mine = version("trajreg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        mine = "unknown"
    return {"trajreg": mine, "torch": str(torch.__version__)}


def write_config(run_dir: Path, sections: dict[str, Any]) -> None:
    """config.yaml: the run's resolved config sections (``trajreg run``: every section of
    its RunConfig; integrations: ``external`` facts, ``record`` and ``analysis``) and the
    versions that wrote it. One shape for both, read by ``read_config``."""
    payload = {**sections, "versions": versions()}
    text = yaml.safe_dump(payload, sort_keys=False)
    replace_atomic(Path(run_dir) / CONFIG, lambda tmp: tmp.write_text(text))


@dataclass
class RunDirConfig:
    """config.yaml read back: the RunConfig of a ``trajreg run`` (None for a run an
    integration recorded), the analysis options and record mode of every run, and
    the integration's facts (``external``)."""

    run: RunConfig | None
    analysis: AnalysisConfig
    record_mode: str
    external: dict[str, Any] | None = None


def read_config(run_dir: Path) -> RunDirConfig:
    """The run's config.yaml (``DamagedRun`` naming the file when it is garbled)."""
    path = Path(run_dir) / CONFIG
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {path}: missing") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"run directory damaged: {path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise DamagedRun(f"run directory damaged: {path}: not a mapping")
    raw.pop("versions", None)
    external = raw.pop("external", None)
    try:
        if external is not None:
            cfg = load_config({"analysis": raw.get("analysis", {}),
                               "record": raw.get("record", {})}, require_sections=False)
            return RunDirConfig(None, cfg.analysis, cfg.record.mode, external)
        cfg = load_config(raw, require_sections=False)
    except ConfigError as exc:
        raise DamagedRun(f"run directory damaged: {path}: {exc}") from None
    return RunDirConfig(cfg, cfg.analysis, cfg.record.mode)


def write_final_state(run_dir: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """final_state.pt: a CPU copy of the model's parameters and buffers (returned)."""
    state = {name: v.detach().cpu().clone() for name, v in model.state_dict().items()}
    replace_atomic(Path(run_dir) / FINAL_STATE, lambda tmp: torch.save(state, tmp))
    return state


def read_final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    path = Path(run_dir) / FINAL_STATE
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {path}: missing") from None
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise DamagedRun(f"run directory damaged: {path}: unreadable ({exc})") from None


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    replace_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))


def read_metrics(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / METRICS
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {path}: missing") from None
    except Exception as exc:  # pyarrow's errors for a damaged file vary
        raise DamagedRun(f"run directory damaged: {path}: unreadable ({exc})") from None


def write_trainlog(run_dir: Path, log: Any) -> None:
    """trainlog.parquet: step, epoch, lr and loss of every step (the one-pass modes'
    metrics hold only the measured steps; the window and re-analysis need all)."""
    table = pd.DataFrame({"step": range(len(log.loss)), "epoch": log.epoch, "lr": log.lr,
                          "loss": log.loss})
    write_parquet(Path(run_dir) / TRAINLOG, table)


def write_outputs(run_dir: Path, table: pd.DataFrame, summary: Summary, *,
                  figures: bool = True, tensorboard: bool = False) -> None:
    """metrics.parquet, the figures, TensorBoard events and, last, summary.json."""
    run_dir = Path(run_dir)
    write_parquet(run_dir / METRICS, table)
    if summary.analysed and figures:
        from trajreg.run.figures import write_figures

        write_figures(run_dir, table, summary.to_dict())
    if summary.analysed and tensorboard:
        from trajreg.run.tensorboard import write_tensorboard

        write_tensorboard(run_dir, table, summary.to_dict())
    write_summary(run_dir, summary)


def require_run_dir(path: Path) -> Path:
    """``path`` if it holds a complete run, else a ``UserError`` saying why not."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    missing = [f for f in (CONFIG, COMPLETE_MARK, METRICS)
               if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path} is not a complete trajreg run (missing {', '.join(missing)})")
    return path
