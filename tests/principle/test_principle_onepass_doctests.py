"""Doctests of the interval, sketch, geometry and onepass modules; they import neither torch
nor scipy."""

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

MODULES = [
    "trajreg.principle.interval",
    "trajreg.principle.sketch",
    "trajreg.principle.geometry",
    "trajreg.principle.onepass",
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0


@pytest.mark.parametrize("name", MODULES)
def test_public_functions_have_docstrings_with_examples(name):
    module = importlib.import_module(name)
    import trajreg.principle as p

    for attr in module.__all__:
        obj = getattr(module, attr)
        assert getattr(p, attr) is obj, f"{attr} is not exported by trajreg.principle"
        assert obj.__doc__, attr
        if callable(obj) and not isinstance(obj, type):
            assert ">>>" in obj.__doc__, f"{attr} has no doctest example"


def test_principle_imports_neither_torch_nor_scipy():
    # trajreg/__init__.py imports the recorder (and so torch); load the principle
    # package under a bare parent so that only its own imports count.
    code = f"""
import sys, types
parent = types.ModuleType("trajreg")
parent.__path__ = [{str(ROOT / "trajreg")!r}]
sys.modules["trajreg"] = parent
import trajreg.principle
for name in {MODULES!r}:
    __import__(name)
bad = [m for m in ("torch", "scipy") if m in sys.modules]
print(bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
