"""Run the doctest examples of every trajreg.principle module."""

import doctest
import importlib

import pytest

MODULES = [
    "trajreg.principle",
    "trajreg.principle._validate",
    "trajreg.principle.quantities",
    "trajreg.principle.estimate",
    "trajreg.principle.window",
    "trajreg.principle.bound",
    "trajreg.principle.speed",
    "trajreg.principle.epochwise",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "trajreg.principle":
        assert result.attempted > 0


def test_public_api_is_complete():
    import trajreg.principle as p

    for name in p.__all__:
        obj = getattr(p, name)
        assert obj.__doc__, name
        if callable(obj) and not isinstance(obj, type):
            assert ">>>" in obj.__doc__, f"{name} has no doctest example"
