"""``trajreg report STUDY_DIR --findings FILE``: the study's findings as a Markdown page,
every number taken from the report's tables."""

from __future__ import annotations

import pandas as pd

from tests.study.test_report import known_study
from trajreg.cli import main
from trajreg.study.verdicts import fmt


def test_findings_page_has_every_comparison_and_its_deciding_numbers(tmp_path, capsys):
    known_study(tmp_path)
    page = tmp_path / "findings.md"
    assert main(["report", str(tmp_path), "--findings", str(page), "-q"]) == 0
    assert f"findings: {page}" in capsys.readouterr().out
    text = page.read_text()
    tech = pd.read_csv(tmp_path / "techniques.csv", keep_default_na=False)
    assert text.startswith("# Findings: known\n")
    assert "## The claim, technique by technique" in text and "## Each comparison" in text
    for _, row in tech.iterrows():
        line = next(x for x in text.splitlines()
                    if x.startswith(f"| {row['technique']}: {row['with']} vs {row['without']}")
                    and x.count("|") == 9)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == row["outcome_gamma"]
        assert cells[2] == fmt(float(row["diff_median"]))
        assert cells[5] == str(int(row["n"]))
        assert cells[6] == row["outcome_speed"]
    # regenerated from the same study: the same page (but the date)
    again = tmp_path / "again.md"
    assert main(["report", str(tmp_path), "--findings", str(again), "-q"]) == 0
    assert again.read_text() == text
