"""The study report: runs.csv, techniques.csv, sensitivity.csv, correlations.csv,
figures/ and a self-contained report.html.

Everything is computed from the run directories and the study file, so
``trajreg report STUDY_DIR`` redraws it at any time, on a partial study too, and a
damaged run is reported (status ``damaged``) and left out rather than stopping it.
The CSVs depend only on the runs (bootstrap seeds are fixed): rerunning the report
writes them byte for byte again. The pieces: ``tables.py`` (the DataFrames and the
decision rule), ``verdicts.py`` (the sentences), ``figures.py`` (the PNGs),
``html.py`` and ``templates/report.html.j2`` (the page).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pandas as pd

from trajreg.atomic import replace_atomic
from trajreg.run.rundir import read_metrics
from trajreg.run.summary import Summary
from trajreg.study import figures, html, tables, verdicts
from trajreg.study.layout import RunRecord, inspect_run, run_path, trajreg_version
from trajreg.study.spec import Block, Study


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


def _series_text(block: Block) -> str:
    """How a block of checkpoint series was measured, for the report ("" for a grid
    block): its runs were not trained by the study but measured from checkpoints."""
    if block.series is None:
        return ""
    measure = _block_text(block.measure) if block.measure else "each series' own"
    return (f"{len(block.series)} checkpoint series, measured from their checkpoints (not "
            f"trained by the study; runs.csv's checkpoints column names them); measure: "
            f"{measure}")


def build_tables(study_dir: str | Path, study: Study,
                 records: dict[str, RunRecord] | None = None) -> dict[str, pd.DataFrame]:
    """The report's four tables (runs, techniques, sensitivity, correlations)."""
    study_dir = Path(study_dir)
    records = records if records is not None else load_records(study_dir, study)
    summaries = {rid: r.summary for rid, r in records.items() if r.summary is not None}
    runs = tables.runs_table(study, records)
    comps = tables.comparisons(study, runs)
    curves = {rid: (s.full_loss, s.epoch_ends) for rid, s in summaries.items()}
    tech = tables.techniques_table(runs, comps, study.report, curves)
    sens = tables.sensitivity_table(tech, comps, runs, summaries, study.report,
                                    lambda rid: read_metrics(run_path(study_dir, rid)))
    corr = tables.correlation_table(study, runs, comps, study.report)
    return {"runs": runs, "techniques": tech, "sensitivity": sens, "correlations": corr}


def write_report(study_dir: str | Path, study: Study) -> dict[str, Path]:
    """Write the CSVs, figures/*.png and report.html into ``study_dir``; their paths."""
    study_dir = Path(study_dir)
    options = study.report
    eps = options.eps_key
    records = load_records(study_dir, study)
    summaries: dict[str, Summary] = {rid: r.summary for rid, r in records.items()
                                     if r.summary is not None}
    t = build_tables(study_dir, study, records)
    runs, tech = t["runs"], t["techniques"]
    comps = tables.comparisons(study, runs)
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    forest_png = fig_dir / "forest.png"
    figures.forest_figure(tech, options.min_effect, forest_png)
    comparison_figures = []
    for comp in comps:
        if comp.pairs:
            path = fig_dir / f"{comp.slug}.png"
            figures.comparison_figure(comp, summaries, eps, path)
            comparison_figures.append({
                "title": comp.title, "image": html.image(path),
                "runs": ", ".join(f"seed {p[0]}: {p[1]} / {p[2]}" for p in comp.pairs)})
    corr_png = fig_dir / "gamma_vs_speed.png"
    figures.correlation_figure(runs, eps, corr_png)

    paths = {name: study_dir / f"{name}.csv" for name in t}
    paths["report"] = study_dir / "report.html"
    for name, df in t.items():
        _write_csv(df, paths[name])

    counts = runs["status"].value_counts()
    not_trained = runs[(runs["trained"] == False) & runs["status"].isin(  # noqa: E712
        tables.FINISHED)]
    trouble = runs[runs["status"].isin(["failed", "damaged"])]
    context = {
        "name": study.name,
        "counts": f"{len(runs)} runs: " + ", ".join(
            f"{counts[k]} {k}" for k in ("done", "diverged", "failed", "damaged", "pending")
            if k in counts) + f"; {len(not_trained)} of the finished runs did not train",
        "written": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "version": trajreg_version(), "options": options,
        "forest": html.image(forest_png),
        "technique_verdicts": verdicts.technique_verdicts(tech),
        # the techniques the claim is asked of: the paper's, and the transformer
        # study's (tables.CLAIM_AXES)
        "claim_techniques": ", ".join(dict.fromkeys(tables.CLAIM_AXES.values())),
        "strata": verdicts.strata_descriptions(tech),
        "power": verdicts.power_note(tech, options),
        # tech has one row per comparison, in comps' order
        "comparisons": [html.comparison(row, comp.title, verdicts.verdict(row))
                        for comp, (_, row) in zip(comps, tech.iterrows(), strict=True)],
        "sensitivity": html.table(t["sensitivity"]),
        "correlations": html.table(t["correlations"]),
        "correlation_image": html.image(corr_png),
        # record.curvature: absent (no section) when no run measured it
        "sharpness": ({"techniques": verdicts.sharpness_verdicts(tech),
                       "correlations": verdicts.sharpness_correlations(t["correlations"])}
                      if runs[tables.CURVATURE_CORRELATED].notna().any() else None),
        "not_comparable": html.table(
            tech.loc[tech["n_not_trained"] > 0,
                     ["technique", "with", "without", "architecture", "block",
                      "n_not_trained", "runs_not_trained"]],
            links=("runs_not_trained",)) if (tech["n_not_trained"] > 0).any() else None,
        "not_trained": html.table(
            not_trained[["run_id", "block", "status", "final_loss"]], links=("run_id",))
        if len(not_trained) else None,
        "blocks": [{"name": b.name, "model": _block_text(b.base.get("model", {})),
                    "data": _block_text(b.base.get("data", {})),
                    "optim": _block_text(b.base.get("optim", {})),
                    "train": _block_text(b.base.get("train", {})),
                    "series": _series_text(b), "grid": _block_text(b.grid),
                    "seeds": b.seeds, "note": b.note}
                   for b in study.blocks],
        "any_series": any(b.series is not None for b in study.blocks),
        "comparison_figures": comparison_figures,
        "runs": html.table(runs.drop(columns=["reason"]), links=("run_id",)),
        "trouble": html.table(trouble[["run_id", "block", "status", "reason"]])
        if len(trouble) else None,
    }
    text = html.render(context)
    replace_atomic(paths["report"], lambda tmp: tmp.write_text(text))
    return paths


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    replace_atomic(path, lambda tmp: df.to_csv(tmp, index=False))

