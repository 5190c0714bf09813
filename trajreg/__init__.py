"""trajreg: measure the regularity principle on neural-network training trajectories.

The mathematics (pure functions over arrays) lives in ``trajreg.principle``; the most
used pieces are re-exported here with the recorder, the run API and the study API.
Attributes load lazily (PEP 562), so ``import trajreg.principle`` imports numpy only,
not torch, pandas or matplotlib.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from trajreg._lazy import lazy_exports

try:
    __version__ = version("trajreg")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "convergence_bound": "trajreg.principle",
    "converging_window": "trajreg.principle",
    "gamma_bar": "trajreg.principle",
    "gamma_hat": "trajreg.principle",
    "kappa_hat": "trajreg.principle",
    "rp_holds": "trajreg.principle",
    "trajectory_quantities": "trajreg.principle",
    "Recorder": "trajreg.record",
    "TrajectoryStore": "trajreg.record",
    "analyze": "trajreg.run",
    "measure_checkpoints": "trajreg.checkpoints",
    "run": "trajreg.distributed.launch",  # any config: trajreg.run.run or N processes
    "load_study": "trajreg.study",
    "run_study": "trajreg.study",
    "write_report": "trajreg.study",
    "RunConfig": "trajreg.train",
    "load_config": "trajreg.train",
}

__all__ = [
    "Recorder", "RunConfig", "TrajectoryStore", "analyze", "convergence_bound",
    "converging_window", "gamma_bar", "gamma_hat", "kappa_hat", "load_config", "load_study",
    "measure_checkpoints", "rp_holds", "run", "run_study", "trajectory_quantities", "write_report",
]

if TYPE_CHECKING:
    from trajreg.checkpoints import measure_checkpoints
    from trajreg.distributed.launch import run
    from trajreg.principle import (
        convergence_bound,
        converging_window,
        gamma_bar,
        gamma_hat,
        kappa_hat,
        rp_holds,
        trajectory_quantities,
    )
    from trajreg.record import Recorder, TrajectoryStore
    from trajreg.run import analyze
    from trajreg.study import load_study, run_study, write_report
    from trajreg.train import RunConfig, load_config

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
