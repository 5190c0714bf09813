"""The docs site (mkdocs.yml) builds in strict mode: `make test` fails on a broken link,
a missing cross-reference or a docstring warning, as `make docs` would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install trajreg[docs])")
pytest.importorskip("material", reason="mkdocs-material is not installed (trajreg[docs])")
pytest.importorskip("mkdocstrings_handlers.python",
                    reason="mkdocstrings[python] is not installed (trajreg[docs])")

ROOT = Path(__file__).resolve().parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(config), "-d", str(site)],
                          cwd=config.parent, env=env, capture_output=True, text=True,
                          timeout=300)


def test_site_builds_strict(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    site = tmp_path / "site"
    api = (site / "api" / "principle.html").read_text(encoding="utf-8")
    # the reference is generated from the docstrings, Sphinx roles become links and
    # doctests become code
    assert 'id="trajreg.principle.estimate.gamma_hat"' in api
    assert 'href="#trajreg.principle.estimate.rp_holds"' in api
    assert "<blockquote>" not in api
    principle = (site / "principle.html").read_text(encoding="utf-8")
    # an inner product is text, not an HTML tag the browser drops
    assert "&lt;x_t - x*, v_t&gt;" in principle
    # a link to a repository file outside docs/ is checked, then shown as its path
    assert "<code>examples/plain_loop.py</code>" in (
        site / "integrations.html").read_text(encoding="utf-8")


def test_broken_references_fail_the_build(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", repo)
    shutil.copytree(ROOT / "docs", repo / "docs")
    for name in ("trajreg", "examples", "README.md"):
        (repo / name).symlink_to(ROOT / name)
    (repo / "docs" / "api" / "broken.md").write_text(
        "# Broken\n\n[a page](../no-such-page.md), [a file](../../no_such_file.py), "
        "[a heading](../../README.md#no-such-heading), [an object][trajreg.no_such_name]\n\n"
        "::: stale\n", encoding="utf-8")
    stale = ('def f(x):\n    """F, as :func:`renamed_function`.\n\n'
             '    Args:\n        y: a renamed argument.\n    """\n')
    (repo / "stale.py").write_text(stale, encoding="utf-8")
    done = build(repo / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    for message in ("no-such-page.md", "no file no_such_file.py",
                    "README.md has no heading '#no-such-heading'", "trajreg.no_such_name",
                    "Parameter 'y' does not appear in the function signature",
                    "cross-reference target 'renamed_function'"):
        assert message in done.stderr, done.stderr
