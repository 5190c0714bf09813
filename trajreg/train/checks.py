"""The checks config sections validate their values with, and how errors quote a value.

Shared by ``config.py`` and the sections that live with the registries they are checked
against (``data.DataConfig``, ``models.ModelConfig``, ``optim.OptimConfig``): each raises
``ConfigError`` with a one-line message starting with the key.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

import numpy as np

from trajreg.errors import ConfigError

QUOTE_CHARS = 80  # the most of a value an error message quotes
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 8, 8, 6
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38
FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45


def quote(value: Any) -> str:
    """``repr(value)`` for an error message, cut to ``QUOTE_CHARS`` characters with
    ``...`` (``reprlib``: a huge or deeply nested value is never expanded in full)."""
    return short(_REPR.repr(value), quoted=False)


def short(text: Any, quoted: bool = False) -> str:
    text = repr(text) if quoted else str(text)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def check_float32(key: str, value: float, below_one: bool = False) -> None:
    """Refuse a number that cannot work in the run's dtype, float32 (the parameters,
    the optimizer's state and the scalars it multiplies them with): above float32's
    largest value, nonzero but 0 in float32, or (``below_one``) below 1 but 1 in float32."""
    if not math.isfinite(value):
        return  # refused as not finite by config._coerce; here for mappings built in code
    if abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{key}: {quote(value)} overflows float32, the run's dtype "
                          f"(largest {FLOAT32_MAX:.4g})")
    single = float(np.float32(value))
    if value != 0 and single == 0:
        raise ConfigError(f"{key}: {quote(value)} is 0 in float32, the run's dtype "
                          f"(smallest positive {FLOAT32_TINY:.2g})")
    if below_one and value < 1 and single >= 1:
        below = float(np.nextafter(np.float32(1), np.float32(0)))
        raise ConfigError(f"{key}: {quote(value)} is 1 in float32, the run's dtype (the "
                          f"largest float32 below 1 is {below:.9g})")


def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {quote(value)} (allowed: {', '.join(allowed)})")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {quote(value)}")


# keys left out of RunConfig.to_dict at their defaults, so configs written before the
# key existed keep their serialized dict and run id (config.omitted_at_default)
OMIT_AT_DEFAULT = {"omit_at_default": True}
