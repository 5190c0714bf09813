"""Run directories: written under a temporary name, renamed when complete.

A directory named ``.NAME.partial-*`` is an unfinished run; a directory without
that prefix always holds a complete run. Files written into a finished run (a
new analysis) go through a temporary name and ``os.replace`` too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from trajreg.errors import UserError

COMPLETE_MARK = "summary.json"  # the last file a run writes


def partial_dir(out: Path) -> Path:
    """A fresh ``.NAME.partial-*`` directory beside ``out``, to ``os.rename`` to ``out``
    once complete (``atomic_dir`` does both; the integrations, whose runs span many
    framework callbacks, call the two steps themselves)."""
    out = Path(out)
    if out.exists():
        raise UserError(f"output directory already exists: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; rename it to ``out`` on success.

    On an exception the temporary directory is removed and ``out`` is not created.
    """
    tmp = partial_dir(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, out)


def _encode(value: Any) -> Any:
    """JSON has no inf/nan: write them as the strings "inf", "-inf" and null."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _encode(value.item())
    return value


def _decode(value: Any) -> Any:
    if value == "inf":
        return math.inf
    if value == "-inf":
        return -math.inf
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically; inf/-inf become strings and nan null (see ``read_json``)."""
    replace_atomic(path, lambda tmp: tmp.write_text(json.dumps(_encode(payload), indent=2)))


def read_json(path: Path) -> dict:
    """Read JSON written by ``write_json``, turning "inf"/"-inf" back into floats."""
    return _decode(json.loads(Path(path).read_text()))


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    replace_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))


def replace_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it to ``path``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def require_run_dir(path: Path) -> Path:
    """``path`` if it holds a complete run, else a ``UserError`` saying why not."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    missing = [f for f in ("config.yaml", COMPLETE_MARK, "metrics.parquet")
               if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path} is not a complete trajreg run (missing {', '.join(missing)})")
    return path
