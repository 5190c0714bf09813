"""Recording trajectories from torch.optim optimizers (hooks on the optimizer step)."""

from trajreg.record.recorder import Recorder, StepStream
from trajreg.record.store import TrajectoryStore, TrajectoryWriter

__all__ = ["Recorder", "StepStream", "TrajectoryStore", "TrajectoryWriter"]
