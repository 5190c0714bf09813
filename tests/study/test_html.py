"""report.html's comparisons: the deciding columns first, every other column of
techniques.csv folded in a <details>, each cell naming its column (its title)."""

from __future__ import annotations

from html.parser import HTMLParser

import pandas as pd

from tests.study.test_report import known_study
from trajreg.study.report import write_report
from trajreg.study.tables import TECHNIQUE_COLUMNS

DECIDING = ["metric", "outcome_gamma", "diff_median", "diff_low", "diff_high", "p_holm",
            "larger_pairs", "smaller_pairs", "n", "outcome_speed", "speed_diff_median",
            "speed_diff_low", "speed_diff_high", "speed_p_holm", "faster_pairs",
            "slower_pairs", "n"]


class Comparisons(HTMLParser):
    """Per <section class="comparison">: the cells' columns (titles) and texts of its
    first table, and the columns named inside its <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.tables = 0
        self.in_details = False
        self.cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("class") == "comparison":
            self.sections.append({"deciding": [], "folded": [], "summary": "",
                                  "details_open": False})
            self.tables = 0
        if not self.sections:
            return
        s = self.sections[-1]
        if tag == "table":
            self.tables += 1
        elif tag == "details":
            self.in_details = True
            s["details_open"] = "open" in a
        elif tag == "td" and a.get("title"):
            self.cell = {"columns": a["title"].split(", "), "text": ""}
            if self.in_details:
                s["folded"].append(self.cell)
            elif self.tables == 1:
                s["deciding"].append(self.cell)
        elif tag == "summary":
            self.cell = s
            s["summary"] = ""

    def handle_endtag(self, tag):
        if tag == "details":
            self.in_details = False
        if tag in ("td", "summary"):
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            key = "summary" if "summary" in self.cell else "text"
            self.cell[key] += data


def test_each_comparison_shows_its_deciding_columns_first_and_folds_the_rest(tmp_path):
    study, *_ = known_study(tmp_path)
    paths = write_report(tmp_path, study)
    tech = pd.read_csv(paths["techniques"], keep_default_na=False)
    assert list(tech.columns) == TECHNIQUE_COLUMNS  # the CSV keeps every column
    parser = Comparisons()
    parser.feed(paths["report"].read_text())
    assert len(parser.sections) == len(tech) == 2
    for section, (_, row) in zip(parser.sections, tech.iterrows(), strict=True):
        deciding = [c for cell in section["deciding"] for c in cell["columns"]]
        assert deciding == DECIDING
        folded = {c for cell in section["folded"] for c in cell["columns"]}
        assert set(TECHNIQUE_COLUMNS) - set(DECIDING) <= folded
        assert folded <= set(TECHNIQUE_COLUMNS)
        assert not section["details_open"]
        assert section["summary"].startswith("Other columns")
        cells = {tuple(cell["columns"]): cell["text"] for cell in section["deciding"]}
        assert cells[("outcome_gamma",)] == row["outcome_gamma"]
        assert cells[("outcome_speed",)] == row["outcome_speed"]

    bn = parser.sections[0]["deciding"]
    # normalization: 8 of 8 pairs larger, p = 2/256 before Holm and 2/128 after
    assert [c["text"] for c in bn[:6]] == [
        "gamma_hat_0.05", "larger", "0.85", "0.6 to 1.1", "0.01562", "8 larger, 0 smaller of 8"]
    opt = parser.sections[1]["deciding"]
    assert opt[0]["text"] == "kappa_hat_0.05" and opt[5]["text"] == "0 larger, 6 smaller of 6"
