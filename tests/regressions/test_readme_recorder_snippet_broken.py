"""README's "The recorder in your own loop" snippet did not run (torch and numpy not
imported, loss_at_x and loss_at_star undefined). Every ```python block of README.md
must compile, and the blocks marked ``<!-- runnable -->`` must run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"(<!-- runnable -->\n)?```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[int, bool, str]]:
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 1, bool(m.group(1)), m.group(2))
            for m in BLOCK.finditer(text)]


def test_readme_has_a_runnable_block():
    assert any(runnable for _, runnable, _ in _blocks())


@pytest.mark.parametrize("line, runnable, code", _blocks(), ids=lambda v: str(v)[:12])
def test_python_block_compiles_and_runnable_ones_run(tmp_path, monkeypatch, capsys, line,
                                                     runnable, code):
    compiled = compile(code, f"{README}:{line}", "exec")
    if runnable:
        monkeypatch.chdir(tmp_path)  # the block writes my-run/ into the working directory
        exec(compiled, {"__name__": "__readme__"})
        assert re.search(r"gamma_hat\(eps=0.05\) = \S+ over 40 steps", capsys.readouterr().out)
