"""A session's run directory: the files ``trajreg run`` writes, from what a session saw.

The training log is rebuilt from the session's steps (F_k is the running epoch loss: the
mean of l_t(x_t) over epoch k's steps, F_0 = l_0(x_0)); config.yaml names the record
mode and the framework's facts (``external``) instead of a model and data; the analysis
is ``trajreg.run.runner.write_analysis``'s, so ``trajreg analyze`` and study reports read
a session's run as any other.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajreg.record.measured import Measured
from trajreg.record.modes import RecordMode
from trajreg.run import analysis, rundir
from trajreg.run.runner import write_analysis
from trajreg.run.summary import Summary
from trajreg.train.config import AnalysisConfig
from trajreg.train.loop import TrainLog


class StateOnly:
    """What ``rundir.write_final_state`` needs of a model: its state dict (an FSDP2
    model's whole state, gathered)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


@dataclasses.dataclass
class SessionRun:
    """What a session writes besides the measurement: the steps' losses at x_t (up to
    x* = x_k), learning rates, epoch ends (``ends`` up to k, ``epoch_ends`` all),
    the first non-finite step, the framework's facts, the loss check and the session's
    own facts."""

    loss_x: list[float]
    lrs: list[float]
    ends: list[int]
    epoch_ends: list[int]
    diverged: int | None
    info: dict[str, Any]
    source: str
    n_params: int
    loss_check: dict[str, Any]
    session: dict[str, Any]
    curvature: dict[str, Any] | None = None  # record.curvature's options, when on


def write_session_run(directory: Path, run: SessionRun, measured: Measured,
                      mode: RecordMode, options: AnalysisConfig, final_state: Any, *,
                      figures: bool, tensorboard: bool) -> Summary:
    """Write the run directory's files into ``directory`` (the partial directory);
    ``final_state``: the model (or a ``StateOnly``) whose state is x*."""
    loss_x, k = run.loss_x, len(run.loss_x)
    full, start = [loss_x[0]], 0
    for e in run.ends:
        full.append(float(np.mean(loss_x[start:e])) if e > start else math.nan)
        start = e
    log = TrainLog(loss=loss_x, loss_star=list(measured.loss_star), full_loss=full,
                   lr=run.lrs[:k], epoch_ends=run.ends,
                   epoch=(np.searchsorted(run.epoch_ends, np.arange(k), "right") + 1)
                   .tolist(), diverged_step=run.diverged)
    record: dict[str, Any] = {"mode": mode.name}
    if run.curvature is not None:
        record["curvature"] = run.curvature
    rundir.write_config(directory, {"external": run.info, "record": record,
                                    "analysis": dataclasses.asdict(options)})
    rundir.write_final_state(directory, final_state)
    facts = analysis.RunFacts(n_params=run.n_params, task="external", evaluation={},
                              source=run.source, loss_check=run.loss_check,
                              session=run.session)
    return write_analysis(directory, log, measured, mode=mode.name, reference="final",
                          options=analysis.AnalysisOptions.from_config(options),
                          facts=facts, figures=figures, tensorboard=tensorboard,
                          words=mode.words)
