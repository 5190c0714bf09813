"""Offline W&B and MLflow for the tracker tests, and what they wrote, read back.

``offline(monkeypatch, tmp_path)`` keeps both inside ``tmp_path`` and off the network:
W&B in offline mode (its runs, staging and cache directories in tmp_path), MLflow on a
``file:`` store there. ``wandb_runs`` parses W&B's offline run files (``run-*.wandb``:
LevelDB-style log blocks of ``wandb_internal_pb2.Record`` protobufs, W&B's own
message types; wandb ships no reader of them).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def offline(monkeypatch, tmp_path: Path) -> Path:
    """Both trackers local to ``tmp_path``; the MLflow tracking URI returned's folder."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DIR": tmp_path, "WANDB_DATA_DIR": tmp_path / "wandb-data",
                       "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                       "WANDB_CONFIG_DIR": tmp_path / "wandb-config",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                       "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",
                       # MLflow 3 refuses a file: store without it
                       "MLFLOW_ALLOW_FILE_STORE": "true",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(key, str(value))
    for key in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
                "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    if "wandb" in sys.modules:  # its settings (WANDB_DIR, ...) are read once a process
        sys.modules["wandb"].teardown()
    import mlflow

    # the Hugging Face MLflowCallback sets the URI process-wide: the variable decides
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    return tmp_path / "mlruns"


@dataclasses.dataclass
class WandbRun:
    name: str
    project: str
    history: list[dict[str, Any]]  # one dict per log call
    summary: dict[str, Any]
    config: dict[str, Any]
    artifacts: list[tuple[str, str, list[str]]]  # (name, type, its files)

    def series(self, key: str, step: str) -> tuple[list[float], list[float]]:
        """(steps, values) of ``key`` against the step metric ``step``."""
        rows = [row for row in self.history if key in row]
        return [row[step] for row in rows], [row[key] for row in rows]


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunk = path.read_bytes(), 32768, 7, b""  # 7: the file's header
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last piece of a record
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def wandb_runs(root: Path) -> list[WandbRun]:
    """Every offline run under ``root`` (``WANDB_DIR``), oldest first."""
    if "wandb" in sys.modules:  # a finished run's file may still be being written
        sys.modules["wandb"].teardown()
    runs = []
    for path in sorted(Path(root).glob("**/offline-run-*/run-*.wandb")):
        run: WandbRun | None = None
        history, summary, config, artifacts = [], {}, {}, []
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = WandbRun(record.run.display_name, record.run.project, history,
                               summary, config, artifacts)
                config.update(_items(record.run.config.update))
            elif kind == "config":
                config.update(_items(record.config.update))
            elif kind == "history":
                history.append(_items(record.history.item))
            elif kind == "summary":
                summary.update(_items(record.summary.update))
            elif kind == "artifact":
                artifacts.append((record.artifact.name, record.artifact.type,
                                  sorted(c.path for c in record.artifact.manifest.contents)))
        assert run is not None, path
        runs.append(run)
    return runs


def finite(table: pd.DataFrame, column: str) -> tuple[list[int], np.ndarray]:
    """(steps, values) of a metrics.parquet column where it is finite, as mirrored."""
    keep = np.isfinite(table[column].to_numpy(dtype=float))
    return table["step"][keep].tolist(), table[column].to_numpy(dtype=float)[keep]
