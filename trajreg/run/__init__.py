"""Runs: train with the reference loop, record, analyse, write a run directory.

The entry is lazy (PEP 562): ``import trajreg.run.summary`` (studies, reports) does not
import torch; ``trajreg.run.run`` and ``trajreg.run.analyze`` load the runner on use.
"""

from __future__ import annotations

from trajreg._lazy import lazy_exports

__all__ = ["analyze", "run"]
__getattr__, __dir__ = lazy_exports(__name__, {name: "trajreg.run.runner" for name in __all__})
