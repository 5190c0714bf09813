"""Mirror a run's per-step quantities and gamma per epoch to a TensorBoard event file.

Written after the analysis (the quantities need x*, the end of the trajectory), into
``RUN_DIR/tensorboard/``: ``tensorboard --logdir RUN_DIR/tensorboard``. Needs the
``tensorboard`` package (``pip install trajreg[tensorboard]``). ``step_rows`` and
``epoch_rows`` are the scalars every mirror logs (W&B and MLflow: ``trackers.py``).
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


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def step_rows(table: pd.DataFrame) -> list[tuple[int, dict[str, float]]]:
    """(step, {quantity: value}) of every step: the finite values of ``STEP_TAGS``."""
    columns = [c for c in STEP_TAGS if c in table]
    rows = []
    for step, *values in zip(table["step"], *(table[c] for c in columns), strict=True):
        row = {c: float(v) for c, v in zip(columns, values, strict=True) if _finite(v)}
        if row:
            rows.append((int(step), row))
    return rows


def epoch_rows(summary: dict) -> list[tuple[int, dict[str, float]]]:
    """(epoch, {series: value}): gamma_hat per eps and gamma_bar from epoch 1, the full
    loss F_k from epoch 0; finite values only."""
    series = {f"gamma_hat_eps{key}": values
              for key, values in summary.get("gamma_hat_per_epoch", {}).items()}
    series["gamma_bar"] = summary.get("gamma_bar_per_epoch", [])
    rows: dict[int, dict[str, float]] = {}
    for name, values in series.items():
        for epoch, g in enumerate(values, start=1):
            if _finite(g):
                rows.setdefault(epoch, {})[name] = float(g)
    for epoch, f in enumerate(summary.get("full_loss", [])):
        if _finite(f):
            rows.setdefault(epoch, {})["full_loss"] = float(f)
    return sorted(rows.items())


def write_tensorboard(run_dir: Path, table: pd.DataFrame, summary: dict) -> Path:
    SummaryWriter = require_tensorboard()  # noqa: N806
    out = Path(run_dir) / "tensorboard"
    writer = SummaryWriter(log_dir=str(out))
    try:
        for kind, rows in (("step", step_rows(table)), ("epoch", epoch_rows(summary))):
            for index, row in rows:
                for name, value in row.items():
                    writer.add_scalar(f"{kind}/{name}", value, index)
    finally:
        writer.close()
    return out
