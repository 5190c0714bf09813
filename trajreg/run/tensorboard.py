"""Mirror a run's per-step quantities and gamma per epoch to a TensorBoard event file.

Written after the analysis (the quantities need x*, the end of the trajectory), into
``RUN_DIR/tensorboard/``: ``tensorboard --logdir RUN_DIR/tensorboard``. Needs the
``tensorboard`` package (``pip install trajreg[tensorboard]``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from trajreg.errors import UserError

STEP_TAGS = ("loss", "loss_star", "D", "a", "s", "b", "c", "r", "lr")


def require_tensorboard():
    """The SummaryWriter class, or a UserError saying what to install (checked before
    training, so a missing package never costs a run)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("tensorboard: the tensorboard package is not installed; "
                        "pip install 'trajreg[tensorboard]'") from None
    return SummaryWriter


def write_tensorboard(run_dir: Path, table: pd.DataFrame, summary: dict) -> Path:
    SummaryWriter = require_tensorboard()  # noqa: N806
    out = Path(run_dir) / "tensorboard"
    writer = SummaryWriter(log_dir=str(out))
    try:
        for col in STEP_TAGS:
            if col not in table:
                continue
            for step, value in zip(table["step"], table[col], strict=True):
                if math.isfinite(value):
                    writer.add_scalar(f"step/{col}", float(value), int(step))
        for key, series in summary.get("gamma_hat_per_epoch", {}).items():
            for epoch, g in enumerate(series, start=1):
                if g is not None and math.isfinite(g):
                    writer.add_scalar(f"epoch/gamma_hat_eps{key}", float(g), epoch)
        for epoch, g in enumerate(summary.get("gamma_bar_per_epoch", []), start=1):
            if g is not None and math.isfinite(g):
                writer.add_scalar("epoch/gamma_bar", float(g), epoch)
        for epoch, f in enumerate(summary.get("full_loss", [])):
            if f is not None and math.isfinite(f):
                writer.add_scalar("epoch/full_loss", float(f), epoch)
    finally:
        writer.close()
    return out
