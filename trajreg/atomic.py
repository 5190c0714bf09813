"""Atomic files: whatever a reader finds is the old file or the new one, never half.

The one low-level helper for every layer that writes (record/, run/, study/): write
to a temporary name beside the target, then ``os.replace``. JSON goes through
``write_json``/``read_json``, which also carry inf/nan (JSON has neither).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def replace_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def encode(value: Any) -> Any:
    """JSON has no inf/nan: inf/-inf become the strings "inf"/"-inf", nan null."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return encode(value.item())
    return value


def decode(value: Any) -> Any:
    """The inverse of ``encode`` (null stays None: the reader knows which are floats)."""
    if value == "inf":
        return math.inf
    if value == "-inf":
        return -math.inf
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict, indent: int | None = 2) -> None:
    """Write JSON atomically; inf/-inf become strings and nan null (see ``read_json``)."""
    text = json.dumps(encode(payload), indent=indent, allow_nan=False)
    replace_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | Path) -> Any:
    """Read JSON written by ``write_json``, turning "inf"/"-inf" back into floats."""
    return decode(json.loads(Path(path).read_text()))
