"""The snippets of the README and the docs pages marked ``<!-- from PATH -->`` are taken
from a tested example:
every line of the snippet is a line of PATH, in the same order (lines of the example
may be left out, as its guards and timers are)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- from (\S+) -->\n```python\n(.*?)```", re.S)


def _snippets() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [found for page in pages for found in SNIPPET.findall(page.read_text())]


def test_the_readme_takes_a_snippet_from_an_example():
    found = SNIPPET.findall((ROOT / "README.md").read_text())
    assert any(path.startswith("examples/") for path, _ in found)


@pytest.mark.parametrize("path, code", _snippets(), ids=lambda v: str(v)[:24])
def test_snippet_lines_are_the_examples_lines_in_order(path, code):
    source = [line.strip() for line in (ROOT / path).read_text().splitlines()]
    at = 0
    for line in filter(None, (line.strip() for line in code.splitlines())):
        try:
            at = source.index(line, at) + 1
        except ValueError:
            pytest.fail(f"README snippet from {path}: {line!r} is not a line of the example "
                        "after the snippet's previous line")
