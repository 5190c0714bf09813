"""report.html: the jinja2 template ``templates/report.html.j2`` filled with the
report's sentences, tables (scrolling inside their box when wide) and figures
(inlined as base64 PNG, so the file is self-contained)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

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


def render(context: dict[str, Any]) -> str:
    """The report page; every value in ``context`` is escaped by the template."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("report.html.j2").render(**context)
