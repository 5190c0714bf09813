"""report.html as a reader sees it: a real headless Chromium at 1280 px.

The page must not scroll sideways (wide tables scroll inside their own boxes), every
figure must load, and each comparison's deciding table must fit the window with its
other columns folded. Screenshots of the page, folded and unfolded, are kept as
artifacts in ``$TRAJREG_TEST_ARTIFACTS`` (default: the test's tmp_path).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.study.browser import Chromium, find_chromium, layout_problems
from tests.study.test_report import known_study
from trajreg.study.html import DECIDING_HEADER
from trajreg.study.report import write_report

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed: apt-get install chromium (or set TRAJREG_CHROMIUM)")

WIDTH, HEIGHT = 1280, 900

COMPARISONS = """[...document.querySelectorAll('section.comparison')].map(s => ({
  first: s.querySelector('table').className,
  header: [...s.querySelector('table thead').querySelectorAll('th')]
    .map(th => th.textContent),
  details: s.querySelectorAll('details').length,
  open: [...s.querySelectorAll('details')].some(d => d.open),
  summary: (s.querySelector('details > summary') || {}).textContent || '',
}))"""


def artifacts(tmp_path: Path) -> Path:
    named = os.environ.get("TRAJREG_TEST_ARTIFACTS")
    out = Path(named) if named else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_report_in_a_browser(tmp_path, record_property):
    study = known_study(tmp_path)[0]
    report = write_report(tmp_path, study)["report"]
    out = artifacts(tmp_path)

    with Chromium(CHROMIUM, width=WIDTH, height=HEIGHT) as page:
        page.load(report)
        assert page.evaluate("[window.innerWidth, window.innerHeight]") == [WIDTH, HEIGHT]
        # forest, correlation and the 2 comparisons' figures, each loaded
        assert page.evaluate("document.images.length") == 4
        assert layout_problems(page) == []
        comparisons = page.evaluate(COMPARISONS)
        shot = page.screenshot(out / "report.png")
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        assert layout_problems(page) == []
        shot_open = page.screenshot(out / "report-details-open.png")

    assert len(comparisons) == 2
    for c in comparisons:
        assert c["first"] == "deciding" and c["header"] == list(DECIDING_HEADER)
        assert c["details"] == 1 and not c["open"] and c["summary"].startswith("Other columns")
    for path in (shot, shot_open):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record_property("screenshots", f"{shot} {shot_open}")
    print(f"screenshots: {shot} {shot_open}")
