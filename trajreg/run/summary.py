"""summary.json as a typed record: one writer, one reader.

``Summary`` holds every key of a run's summary.json (the public format, documented
in README's run-directory table). ``write_summary`` writes it atomically with a
``format`` version; ``read_summary`` reads any version this code knows and raises
``DamagedRun`` naming the file and the key when something is missing or of the
wrong type, so a renamed key can never silently become NaN in a report.

Keys that only some runs have (the regularity analysis, absent in record mode
``off``; the integration's ``source`` and ``loss_check``; the one-pass modes'
intervals) are optional fields, left out of the file when they are None.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajreg.atomic import read_json, write_json
from trajreg.errors import DamagedRun

FILE = "summary.json"
FORMAT = 2  # 1: before the key existed (same keys); 2: adds format and trained
_OPTIONAL = {"optional": True}


def _opt(default: Any = None) -> Any:
    return field(default=default, metadata=_OPTIONAL)


@dataclass
class Summary:
    """Everything summary.json says about a run (see README, "The run directory")."""

    # --- every run
    n_steps: int
    full_loss: list[float]  # F_0 .. F_E
    epoch_ends: list[int]  # steps done after each epoch
    final_loss: float
    loss_threshold: float
    steps_to_threshold: int | None
    epochs_to_threshold: int | None
    auc_log_loss: float
    task: str
    evaluation: dict[str, float]
    record_mode: str
    reference: str
    n_params: int
    diverged: bool
    diverged_step: int | None
    trained: bool  # final loss below (1 - margin) F_0 and not diverged
    # --- the regularity analysis (None in record mode off)
    reference_step: int | None = _opt()
    window: list[int] | None = _opt()
    gamma_hat: dict[str, float] | None = _opt()
    kappa_hat: dict[str, float] | None = _opt()
    gamma_bar: float | None = _opt()
    kappa_bar: float | None = _opt()
    rp_fraction: dict[str, float] | None = _opt()
    star_convex_fraction: float | None = _opt()
    r_quantiles: dict[str, float] | None = _opt()
    gamma_hat_per_epoch: dict[str, list[float]] | None = _opt()
    gamma_bar_per_epoch: list[float] | None = _opt()
    bound: dict[str, Any] | None = _opt()
    f_star: float | None = _opt()
    options: dict[str, Any] | None = _opt()
    sensitivity: dict[str, Any] | None = _opt()
    # --- one-pass record modes: intervals and the sketch's self-check
    gamma_hat_ci: dict[str, list[float | None]] | None = _opt()
    kappa_hat_ci: dict[str, list[float | None]] | None = _opt()
    gamma_bar_ci: list[float | None] | None = _opt()
    n_sampled_window: int | None = _opt()
    sketch_error: dict[str, Any] | None = _opt()
    # --- trajectory geometry (docs/principle.md, section 14): cos_v_positive and the path
    # of every analysed run; mu_hat, L_hat, rsi_eb_ratio, cos_g_positive with gradients
    mu_hat: dict[str, float] | None = _opt()
    L_hat: dict[str, float] | None = _opt()
    rsi_eb_ratio: dict[str, float] | None = _opt()
    cos_g_positive: float | None = _opt()
    cos_v_positive: float | None = _opt()
    path_ratio: float | None = _opt()
    mli: dict[str, Any] | None = _opt()  # alpha, loss (F along x_0 -> x*), monotone, max_bump
    # --- record.curvature: sampled steps, fraction above the edge of stability, medians
    curvature: dict[str, Any] | None = _opt()
    # --- runs recorded by an integration
    source: str | None = _opt()
    loss_check: dict[str, Any] | None = _opt()
    # epochs (end_epoch, epoch_steps or none), eval_batches, loss_rtol, skipped_steps,
    # discarded_batches, steps_without_batch (trajreg.integrations.session)
    session: dict[str, Any] | None = _opt()
    # --- a run measured from its checkpoints (trajreg.checkpoints): the series, the
    # displacement form's gamma_hat_disp, the identity check, the evaluation set
    checkpoints: dict[str, Any] | None = _opt()
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("optional") and value is None:
                continue
            out[f.name] = value
        return out

    @property
    def analysed(self) -> bool:
        """Whether the run has a regularity analysis (record mode other than off)."""
        return self.gamma_hat is not None

    def gamma(self, eps: float | str) -> float:
        """gamma_hat at ``eps`` (a KeyError naming the eps values the run has)."""
        return _at(self.gamma_hat, eps, "gamma_hat")

    def kappa(self, eps: float | str) -> float:
        return _at(self.kappa_hat, eps, "kappa_hat")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = FILE) -> Summary:
        if not isinstance(raw, dict):
            raise DamagedRun(f"{where}: not a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        raw = dict(raw)
        if "trained" not in raw and "full_loss" in raw:  # format 1
            raw["trained"] = trained(raw["full_loss"], bool(raw.get("diverged")))
        for name, f in fields.items():
            if name in raw:
                kwargs[name] = _null_to_nan(raw[name], str(f.type))
            elif name == "format":
                kwargs[name] = 1
            elif not f.metadata.get("optional"):
                raise DamagedRun(f"{where}: missing key {name!r}")
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - fields above cover the signature
            raise DamagedRun(f"{where}: {exc}") from None


def _at(table: dict[str, float] | None, eps: float | str, name: str) -> float:
    if table is None:
        raise KeyError(f"{name}: the run has no regularity analysis (record mode off)")
    key = str(float(eps))
    if key not in table:
        raise KeyError(f"{name}: eps {key} was not analysed (the run has {', '.join(table)})")
    return table[key]


def _null_to_nan(value: Any, kind: str) -> Any:
    # JSON writes nan as null; the float fields read it back as nan
    if value is None and kind in ("float", "float | None"):
        return math.nan
    return value


def trained(full_loss: list[float], diverged: bool, margin: float = 0.1) -> bool:
    """Whether a run trained: not diverged and F_final <= (1 - margin) F_0."""
    if diverged or len(full_loss) < 2:
        return False
    f0, f1 = full_loss[0], full_loss[-1]
    return bool(math.isfinite(f0) and math.isfinite(f1) and f1 <= (1.0 - margin) * f0)


def write_summary(run_dir: str | Path, summary: Summary) -> None:
    """summary.json, atomically (it is the last file a run writes: its completion mark)."""
    write_json(Path(run_dir) / FILE, summary.to_dict())


def read_summary(run_dir: str | Path) -> Summary:
    """The run's summary, or ``DamagedRun`` saying which file and why."""
    path = Path(run_dir) / FILE
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"run directory damaged: {path}: not valid JSON ({exc})") from None
    return Summary.from_dict(raw, where=f"run directory damaged: {path}")
