"""Run directories with chosen numbers, for report tests whose answers are known.

``fake_run`` writes what a finished run leaves that the report reads: a complete
summary.json (through ``Summary``, the one writer) and a metrics.parquet whose
per-step quantities reproduce the chosen gamma_hat over the window (b_t = 1, s_t = 0,
so gamma_hat_eps is an order statistic of a_t). These are data fixtures, not stand-ins
for the code under test: the report code reads them with its real readers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trajreg.atomic import write_json
from trajreg.principle import auc_log_loss, steps_to_threshold
from trajreg.run.summary import Summary, trained
from trajreg.study.layout import run_path

STEPS_PER_EPOCH = 20


def loss_curve(final: float, epochs: int = 3, start: float = 2.0) -> list[float]:
    """F_0 .. F_E falling geometrically from ``start`` to ``final``."""
    return [float(v) for v in np.geomspace(start, final, epochs + 1)]


def fake_run(study_dir, rid: str, gamma: float, kappa: float | None = None,
             final: float = 0.1, **kw) -> Summary:
    """A finished run directory (``make_run``) at ``runs/<rid>`` of ``study_dir``."""
    summary, table = make_run(gamma, kappa, final, **kw)
    d = run_path(study_dir, rid)
    d.mkdir(parents=True)
    table.to_parquet(d / "metrics.parquet", index=False)
    write_json(d / "summary.json", summary.to_dict())
    return summary


def make_run(gamma: float, kappa: float | None = None, final: float = 0.1, *,
             diverged: bool = False, epochs: int = 3, full_loss: list[float] | None = None,
             lr: float = 0.1, per_epoch: list[float] | None = None,
             sensitivity: dict | None | str = "auto", gamma_ci: float | None = None,
             window_end: int | None = None) -> tuple[Summary, pd.DataFrame]:
    """A run's summary and metrics table: gamma_hat {"0.0": gamma - 1, "0.05": gamma},
    kappa_hat likewise (default lr * gamma), the given loss curve (default
    ``loss_curve(final)``)."""
    full = list(full_loss) if full_loss is not None else loss_curve(final, epochs)
    epochs = len(full) - 1
    ends = [STEPS_PER_EPOCH * (k + 1) for k in range(epochs)]
    n = ends[-1]
    kappa = lr * gamma if kappa is None else kappa
    end = window_end if window_end is not None else ends[-2] if epochs > 1 else ends[0]
    # b = 1, s = 0: r_t = a_t; floor(0.05 * end) steps at gamma - 1, the rest at gamma
    k = math.floor(round(0.05 * end, 9))
    a = np.full(n, gamma if math.isfinite(gamma) else 1.0)
    a[:k] = gamma - 1 if math.isfinite(gamma) else 0.0
    table = pd.DataFrame({
        "step": np.arange(n), "epoch": np.repeat(np.arange(epochs), STEPS_PER_EPOCH),
        "lr": np.full(n, lr), "loss": np.full(n, 1.0), "loss_star": np.zeros(n),
        "D": np.linspace(1.0, 0.0, n), "a": a, "s": np.zeros(n), "b": np.ones(n),
        "c": np.ones(n), "r": a, "full_loss": np.nan})
    if sensitivity == "auto":  # what the analysis writes for a store-mode run
        sensitivity = {"gamma_hat": {"0.0": gamma - 1, "0.05": gamma, "0.1": gamma},
                       "kappa_hat": {"0.0": kappa - 1, "0.05": kappa, "0.1": kappa},
                       "reference_best": {"gamma_hat": {"0.05": gamma},
                                          "kappa_hat": {"0.05": kappa}}}
    finite = [f for f in full if math.isfinite(f)]
    steps, ep = steps_to_threshold(full, ends, 0.1) if not diverged else (None, None)
    summary = Summary(
        n_steps=n, full_loss=full, epoch_ends=ends, final_loss=full[-1], loss_threshold=0.1,
        steps_to_threshold=steps, epochs_to_threshold=ep,
        auc_log_loss=auc_log_loss(full) if not diverged else math.nan,
        task="classification", evaluation={"loss": finite[-1], "accuracy": 0.5},
        record_mode="store", reference="final", n_params=100, diverged=diverged,
        diverged_step=n - 1 if diverged else None, trained=trained(full, diverged),
        reference_step=n, window=[0, end],
        gamma_hat={"0.0": gamma - 1, "0.05": gamma},
        kappa_hat={"0.0": kappa - 1, "0.05": kappa},
        gamma_bar=gamma + 0.5, kappa_bar=kappa + 0.5,
        gamma_hat_per_epoch={"0.0": [gamma - 1] * epochs,
                             "0.05": list(per_epoch) if per_epoch else [gamma] * epochs},
        gamma_bar_per_epoch=[gamma + 0.5] * epochs,
        sensitivity=sensitivity,
        gamma_hat_ci=None if gamma_ci is None else {
            "0.05": [gamma - gamma_ci / 2, gamma + gamma_ci / 2]},
    )
    return summary, table


BASE = {"data": {"name": "digits", "batch_size": 64, "subset": 256},
        "model": {"name": "mlp", "depth": 2, "width": 8},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1}, "record": {"mode": "store"}}


def small_raw(seeds=(0, 1), **over) -> dict:
    """A study of tiny real runs (about a second each): norm none vs batch."""
    import copy

    raw = {"name": "small", "base": copy.deepcopy(BASE),
           "grid": {"model.norm": ["none", "batch"]}, "seeds": list(seeds)}
    raw.update(over)
    return raw


def fake_study(study_dir, study, gamma=lambda axes, seed: 0.5, **kw) -> None:
    """Every run of ``study`` finished (fake_run) in ``study_dir``, with its study.yaml."""
    from trajreg.study.layout import write_study_file

    write_study_file(study_dir, study.raw)
    done = set()
    for block in study.blocks:
        for rid, axes, seed in block.members:
            if rid not in done:
                fake_run(study_dir, rid, gamma(axes, seed), **kw)
                done.add(rid)


def first_comparison(study_dir, study):
    """(the study's first comparison, summaries by run id, runs table), read back from
    ``study_dir`` by the report's own readers."""
    from trajreg.study import tables
    from trajreg.study.report import load_records

    records = load_records(study_dir, study)
    runs = tables.runs_table(study, records)
    summaries = {rid: r.summary for rid, r in records.items() if r.summary is not None}
    return tables.comparisons(study, runs)[0], summaries, runs


def tick_labels(fig, ax, axis: str = "y") -> list[str]:
    """The visible tick labels of an axis once the figure is drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    lim = ax.get_ylim() if axis == "y" else ax.get_xlim()
    lo, hi = min(lim), max(lim)
    ticks = ax.get_yticks() if axis == "y" else ax.get_xticks()
    return [t.get_text() for t, v in zip(labels, ticks, strict=False)
            if t.get_text() and lo <= v <= hi]


def records(study, make) -> dict:
    """run_id -> RunRecord for every run of ``study``: ``make(block, axes, seed)`` gives
    the run's ``make_run`` keyword arguments (a dict), or None for a pending run."""
    from trajreg.study.layout import RunRecord

    out = {}
    for block in study.blocks:
        for rid, axes, seed in block.members:
            if rid in out:
                continue
            kw = make(block.name, axes, seed)
            out[rid] = RunRecord("pending") if kw is None else RunRecord(
                "done", summary=make_run(**kw)[0])
    return out


def technique_rows(study, make):
    """(techniques table, runs table, comparisons) of a study whose runs ``records``
    builds in memory: the real table code on constructed runs."""
    from trajreg.study import tables

    runs = tables.runs_table(study, records(study, make))
    comps = tables.comparisons(study, runs)
    return tables.techniques_table(runs, comps, study.report), runs, comps
