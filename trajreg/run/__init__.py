"""Runs: train with the reference loop, record, analyse, write a run directory.

The entry is lazy (PEP 562): ``import trajreg.run.summary`` (studies, reports) does not
import torch; ``trajreg.run.run`` and ``trajreg.run.analyze`` load the runner on use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["analyze", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("trajreg.run.runner"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trajreg.run' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
