"""A word wider than the window (a URL in a block's note, a long path) made the report
page scroll sideways: the body grew to fit it. Text now breaks inside such a word."""

from __future__ import annotations

import copy

import pytest

from tests.study.browser import Chromium, find_chromium, layout_problems
from tests.study.test_report import known_study
from trajreg.study.report import write_report
from trajreg.study.spec import load_study

CHROMIUM = find_chromium()

# no hyphen: Chromium may break a line after one, not after '_' or '/'
LONG_WORD = "https://example.org/" + "data_" * 60 + "readme.html"


@pytest.mark.skipif(CHROMIUM is None,
                    reason="no Chromium installed: apt-get install chromium")
def test_long_word_in_a_note_keeps_the_page_in_the_window(tmp_path):
    raw = copy.deepcopy(known_study(tmp_path)[0].raw)
    raw["blocks"][0]["note"] = f"Source: {LONG_WORD}."
    report = write_report(tmp_path, load_study(raw))["report"]
    assert LONG_WORD in report.read_text()
    with Chromium(CHROMIUM, width=1280, height=900) as page:
        page.load(report)
        assert layout_problems(page) == []
