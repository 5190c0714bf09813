"""trajreg: measure the regularity principle on neural-network training trajectories.

The mathematics (pure functions over arrays) lives in ``trajreg.principle``; the most
used pieces are re-exported here with the recorder, the run API and the study API.
"""

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
from trajreg.run import analyze, run
from trajreg.study import load_study, run_study, write_report
from trajreg.train import RunConfig, load_config

__version__ = "0.1.0"

__all__ = [
    "Recorder",
    "RunConfig",
    "TrajectoryStore",
    "analyze",
    "convergence_bound",
    "converging_window",
    "gamma_bar",
    "gamma_hat",
    "kappa_hat",
    "load_config",
    "load_study",
    "rp_holds",
    "run",
    "run_study",
    "trajectory_quantities",
    "write_report",
]
