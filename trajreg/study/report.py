"""The study report: runs.csv, techniques.csv, figures and a self-contained report.html.

Everything is computed from the run directories (``summary.json``) and the study
file, so ``trajreg report STUDY_DIR`` redraws it at any time, on a partial study too.
The pieces: ``tables.py`` (the DataFrames), ``verdicts.py`` (the sentences),
``figures.py`` (the PNGs), ``html.py`` and ``templates/report.html.j2`` (the page).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pandas as pd

from trajreg.atomic import replace_atomic
from trajreg.study import figures, html, tables
from trajreg.study.layout import RunRecord, inspect_run, trajreg_version
from trajreg.study.spec import Study, label
from trajreg.study.verdicts import technique_verdicts, verdict


def load_records(study_dir: str | Path, study: Study) -> dict[str, RunRecord]:
    """run_id -> what the study directory holds for it (summary, or why there is none)."""
    return {spec.run_id: inspect_run(study_dir, spec.run_id) for spec in study.runs}


def _block_text(value: object) -> str:
    """A block's settings as ``key: value`` text, mappings in parentheses, lists joined.

    >>> _block_text({"name": "mlp", "depth": 4, "optim": [{"name": "sgd", "lr": 0.05}]})
    'name: mlp, depth: 4, optim: (name: sgd, lr: 0.05)'
    """
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_block_value(v)}" for k, v in value.items())
    return _block_value(value)


def _block_value(value: object) -> str:
    if isinstance(value, dict):
        return f"({_block_text(value)})"
    if isinstance(value, list):
        return " / ".join(_block_value(v) for v in value)
    return str(value)


def write_report(study_dir: str | Path, study: Study) -> dict[str, Path]:
    """Write runs.csv, techniques.csv, figures/*.png and report.html into ``study_dir``."""
    study_dir = Path(study_dir)
    eps = tables.primary_eps(study)
    records = load_records(study_dir, study)
    summaries = {rid: r.summary for rid, r in records.items() if r.summary is not None}
    runs = tables.runs_table(study, records)
    comps = tables.comparisons(study, runs)
    tech = tables.techniques_table(runs, comps)
    corr = tables.correlation_table(tables.correlations(study, runs))
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    comparison_figures = []
    for comp in comps:
        if comp.pairs:
            path = fig_dir / f"{comp.slug}.png"
            figures.comparison_figure(comp, summaries, eps, path)
            comparison_figures.append({
                "title": f"{comp.technique}: {label(comp.with_value)} vs "
                         f"{label(comp.without_value)} ({comp.block})",
                "image": html.image(path),
                "runs": ", ".join(f"{p[1]}/{p[2]}" for p in comp.pairs)})
    corr_png = fig_dir / "gamma_vs_speed.png"
    figures.correlation_figure(runs, eps, corr_png)

    paths = {"runs": study_dir / "runs.csv", "techniques": study_dir / "techniques.csv",
             "report": study_dir / "report.html"}
    _write_csv(runs, paths["runs"])
    _write_csv(tech, paths["techniques"])

    counts = runs["status"].value_counts().to_dict()
    failed = runs[runs["status"] == "failed"]
    context = {
        "name": study.name,
        "counts": f"{len(runs)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        "written": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "version": trajreg_version(), "eps": eps,
        "technique_verdicts": technique_verdicts(tech),
        "comparison_verdicts": [verdict(r) for _, r in tech.iterrows()],
        "techniques": html.table(tech, links=("runs_with", "runs_without")),
        "blocks": [{"name": b.name, "model": _block_text(b.base.get("model", {})),
                    "data": _block_text(b.base.get("data", {})), "grid": _block_text(b.grid),
                    "seeds": b.seeds, "note": b.note} for b in study.blocks],
        "comparison_figures": comparison_figures,
        "correlations": html.table(corr),
        "correlation_image": html.image(corr_png),
        "runs": html.table(runs.drop(columns=["reason"]), links=("run_id",)),
        "failed": html.table(failed[["run_id", "block", "reason"]]) if len(failed) else None,
    }
    text = html.render(context)
    replace_atomic(paths["report"], lambda tmp: tmp.write_text(text))
    return paths


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    replace_atomic(path, lambda tmp: df.to_csv(tmp, index=False))
