"""Measure a finished run from its checkpoints: no retraining, any framework.

``measure_checkpoints(paths, out, ...)`` (``trajreg checkpoints PATH... --out DIR``) reads
a series of checkpoints (Hugging Face ``checkpoint-N/`` folders, Lightning ``.ckpt``,
``torch.save`` state dicts, safetensors), orders it by step and writes a run directory
with the epochwise form of the principle at every checkpoint and the displacement
between consecutive ones (docs/checkpoints.md).
"""

from __future__ import annotations

from trajreg.checkpoints.api import measure_checkpoints
from trajreg.checkpoints.measure import CheckpointOptions
from trajreg.checkpoints.series import Checkpoint, find_checkpoints

__all__ = ["Checkpoint", "CheckpointOptions", "find_checkpoints", "measure_checkpoints"]
