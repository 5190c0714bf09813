"""report.html: the jinja2 template ``templates/report.html.j2`` filled with the
report's sentences, tables (scrolling inside their box when wide) and figures
(inlined as base64 PNG, so the file is self-contained).

Each comparison (a row of techniques.csv) is shown as the few columns that decide it
(``DECIDING``: outcome, median difference, interval, p after Holm, pairs; for the
metric, then speed) with its other columns folded in a ``<details>``; every cell names
its techniques.csv column(s) in its ``title``, so the page is a view of the CSV.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from trajreg.study.tables import CURVATURE_COMPARED, GEOMETRY_COMPARED
from trajreg.study.verdicts import fmt

TEMPLATES = Path(__file__).parent / "templates"


def image(path: Path) -> dict[str, str]:
    """A PNG for the template: its name and a data: URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"alt": Path(path).name, "src": f"data:image/png;base64,{data}"}


def table(df: pd.DataFrame, links: tuple[str, ...] = ()) -> dict[str, Any]:
    """A DataFrame for the template: column names and rows of cells; a cell of a
    ``links`` column is a list of run ids, each linked to its summary.json."""
    rows = []
    for values in df.itertuples(index=False, name=None):
        cells: list[dict[str, Any]] = []
        for column, v in zip(df.columns, values, strict=True):
            if column in links and isinstance(v, str) and v:
                cells.append({"links": [(f"runs/{r}/summary.json", r) for r in v.split()]})
            else:
                cells.append({"text": "" if v is None else fmt(v)})
        rows.append(cells)
    return {"columns": [str(c) for c in df.columns], "rows": rows}


# (row label, outcome, median, interval low, high, p after Holm, pairs one way, other way,
# the words for them): the columns that decide a comparison, the metric's then speed's
DECIDING = (
    ("metric", "outcome_gamma", "diff_median", "diff_low", "diff_high", "p_holm",
     "larger_pairs", "smaller_pairs", ("larger", "smaller")),
    ("speed (auc_log_loss)", "outcome_speed", "speed_diff_median", "speed_diff_low",
     "speed_diff_high", "speed_p_holm", "faster_pairs", "slower_pairs",
     ("faster", "slower")),
)
DECIDING_HEADER = ("", "outcome", "median difference (with \u2212 without)", "95% interval",
                   "p after Holm", "pairs")
# the folded part: the comparison's setting, one column a line ...
SETTING = ("technique", "role", "axis", "block", "architecture", "dataset", "context",
           "with", "without", "metric", "n_pairs", "n_not_trained", "n", "note",
           "runs_with", "runs_without", "runs_not_trained")
RUN_LINKS = ("runs_with", "runs_without", "runs_not_trained")
# ... and every measure compared, one a row: (label, its columns in MEASURE_HEADER's
# order, None where techniques.csv has no such column)
MEASURE_HEADER = ("measure", "with", "without", "median difference", "low", "high", "p",
                  "p after Holm", "min effect", "measurement uncertainty", "pairs > 0",
                  "pairs < 0", "outcome")
MEASURES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    ("metric", ("gamma_with", "gamma_without", "diff_median", "diff_low", "diff_high",
                "p_value", "p_holm", "min_effect", "measurement_uncertainty",
                "larger_pairs", "smaller_pairs", "outcome_gamma")),
    ("speed (auc_log_loss)", ("speed_with", "speed_without", "speed_diff_median",
                              "speed_diff_low", "speed_diff_high", "speed_p_value",
                              "speed_p_holm", "speed_min_effect", None, "slower_pairs",
                              "faster_pairs", "outcome_speed")),
    ("speed (steps to a common loss)", (None, None, "steps_diff_median", "steps_diff_low",
                                        "steps_diff_high", "steps_p_value", "steps_p_holm",
                                        None, None, None, None, "outcome_speed_steps")),
    *((short, (f"{short}_with", f"{short}_without", f"{short}_diff_median",
               f"{short}_diff_low", f"{short}_diff_high", None, f"{short}_p_holm", None,
               None, None, None, f"outcome_{short}"))
      for short in (*(s for s, _ in GEOMETRY_COMPARED), *CURVATURE_COMPARED)),
    ("mli_monotone", ("mli_monotone_with", "mli_monotone_without", *(None,) * 10)),
)
FOLDED_SUMMARY = ("setting and runs; medians, p before Holm, minimum effect; "
                  "speed in steps; geometry ({}, mli_monotone); curvature ({}, ...)").format(
    ", ".join(s for s, _ in GEOMETRY_COMPARED), CURVATURE_COMPARED[0])


def _cell(row: pd.Series, column: str | None) -> dict[str, Any]:
    if column is None:
        return {"text": "", "column": ""}
    v = row[column]
    if column in RUN_LINKS:
        return {"links": [(f"runs/{r}/summary.json", r) for r in str(v or "").split()],
                "column": column}
    return {"text": "" if v is None else fmt(v), "column": column}


def comparison(row: pd.Series, title: str, verdict: str) -> dict[str, Any]:
    """One comparison for the template: its title and sentence, the deciding table and
    the folded rest (``setting`` one column a line, ``measures`` one measure a row)."""
    deciding = []
    for label, outcome, median, low, high, p, one, other, words in DECIDING:
        pairs = f"{fmt(row[one])} {words[0]}, {fmt(row[other])} {words[1]} of {fmt(row['n'])}"
        deciding.append([
            {"text": row["metric"] if label == "metric" else label,
             "column": "metric" if label == "metric" else ""},
            _cell(row, outcome), _cell(row, median),
            {"text": f"{fmt(row[low])} to {fmt(row[high])}", "column": f"{low}, {high}"},
            _cell(row, p), {"text": pairs, "column": f"{one}, {other}, n"}])
    measures = [[{"text": row["metric"] if label == "metric" else label, "column": ""},
                 *(_cell(row, c) for c in columns)] for label, columns in MEASURES]
    return {"title": title, "verdict": verdict, "outcome": row["outcome_gamma"],
            "deciding": {"columns": list(DECIDING_HEADER), "rows": deciding},
            "summary": FOLDED_SUMMARY,
            "setting": [(c, _cell(row, c)) for c in SETTING],
            "measures": {"columns": list(MEASURE_HEADER), "rows": measures}}


def render(context: dict[str, Any]) -> str:
    """The report page; every value in ``context`` is escaped by the template."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("report.html.j2").render(**context)
