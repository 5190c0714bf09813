"""Record modes by name: the registry ``record.mode`` is validated against.

A mode is one ``RecordMode`` subclass (``base.py``); adding one is a new module
and one line here.
"""

from __future__ import annotations

from trajreg.record.modes.base import MeasureContext, RecordMode
from trajreg.record.modes.off import OffMode
from trajreg.record.modes.replay import ReplayMode, StepStream
from trajreg.record.modes.sample import SampleMode
from trajreg.record.modes.sketch import SketchMode
from trajreg.record.modes.store import StoreMode

MODES: dict[str, type[RecordMode]] = {
    "store": StoreMode,
    "replay": ReplayMode,
    "off": OffMode,
    "sample": SampleMode,
    "sketch": SketchMode,
}
MODE_NAMES: tuple[str, ...] = tuple(MODES)


def get_mode(name: str) -> type[RecordMode]:
    """The mode class registered as ``name`` (ValueError naming the choices)."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"record mode: unknown {name!r} "
                         f"(allowed: {', '.join(MODE_NAMES)})") from None


__all__ = ["MODES", "MODE_NAMES", "MeasureContext", "RecordMode", "StepStream", "get_mode"]
