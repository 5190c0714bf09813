"""The run directory: its layout, and the one module that writes and reads it.

Layout (the contract ``trajreg analyze``, reports and integrations rely on)::

    config.yaml        the resolved config, with trajreg and torch versions
    metrics.parquet    one row per measured optimizer step
    summary.json       the analysis and run facts (``trajreg.run.summary.Summary``)
    data.json          token sets only: the corpus (source, size, SHA-256), vocabulary,
                       split and windows (``Dataset.facts``, docs/data.md)
    *.png              figures (``figures.FIGURES``)
    final_state.pt     the model's state at the end (parameters and buffers)
    trajectory/        the record mode's files (store: every iterate x_t)

Run directories are written under a temporary name, renamed when complete.

A directory named ``.NAME.partial-*`` is an unfinished run; a directory without
that prefix always holds a complete run. The temporary name carries its owner
(host, pid and process start time), so the next run to the same ``NAME`` removes
what a killed run left and never touches one that is still being written. The
final rename never replaces a directory that appeared meanwhile.

A new analysis of a finished run (``replace_outputs``) is all-or-nothing: it is
written into a hard-linked copy of the run (``.NAME.tmp-analyze-*``) and the two
directories are swapped in one ``renameat2(RENAME_EXCHANGE)``, so a reader (or a
kill -9) sees the old analysis or the new one, never a mix. Where the kernel or
file system cannot swap, the new files are renamed into place one by one,
summary.json last.

Every file of a finished run is covered by ``checksums.json`` (``MANIFEST``), written
by ``finish_dir`` as the last file before the rename and rewritten, inside the same
swap, by ``replace_outputs``: its size and CRC32, or, for the segment files of a
closed trajectory store, the CRC32 of the ``.npy`` header with the data left to the
CRC32s the writer computed as it wrote the rows (the sidecar, itself covered).

``verify_run_dir`` checks a run before it is analysed again: every file readable,
the facts of config.yaml, summary.json and metrics.parquet agreeing, the record
mode's own files (``RecordMode.verify``) and every file against checksums.json
(``DamagedRun`` naming file and fault). A run without checksums.json (written before
it existed) gets every check but that one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from trajreg.atomic import replace_atomic
from trajreg.errors import ConfigError, DamagedRun, UserError
from trajreg.run.summary import FILE as SUMMARY
from trajreg.run.summary import Summary, read_summary, write_summary
from trajreg.train.config import AnalysisConfig, RunConfig, load_config, parse_yaml

CONFIG = "config.yaml"
METRICS = "metrics.parquet"
FINAL_STATE = "final_state.pt"
TRAJECTORY = "trajectory"
CHECKPOINTS = "checkpoints"  # train.checkpoints: the model's state at step 0 and epoch ends
TRAINLOG = "trainlog.parquet"  # every step's loss, epoch, lr where metrics hold a sample
DATA_FACTS = "data.json"  # Dataset.facts of a token set (the vocabulary, the corpus)
MANIFEST = "checksums.json"  # size and CRC32 of every other file, written last
MANIFEST_FORMAT = "trajreg-checksums/1"
COMPLETE_MARK = SUMMARY  # the last file a run writes

__all__ = ["COMPLETE_MARK", "DATA_FACTS", "MANIFEST", "RunDirConfig", "atomic_dir",
           "check_new_out", "discard_trajectory", "finish_dir", "kept_trajectory",
           "partial_dir", "read_config", "read_data_facts", "read_final_state",
           "read_metrics", "read_summary", "remove_stale", "replace_outputs",
           "require_run_dir", "verify_manifest", "verify_run_dir", "versions",
           "write_config", "write_data_facts", "write_final_state", "write_manifest",
           "write_outputs", "write_parquet", "write_state", "write_summary"]

PARTIAL = ".partial-"  # .NAME.partial-OWNER-*: a run being written
ANALYZE_TMP = ".tmp-analyze-"  # .NAME.tmp-analyze-OWNER-*: a new analysis being swapped in
_OWNER = re.compile(r"([0-9a-f]{8})-(\d+)-(\d+)-")


# ------------------------------------------------------------------ temporary directories

def _process_start(pid: int) -> int:
    """The start time of process ``pid`` in clock ticks since boot (0: unknown), which
    tells a live owner from a later process that reuses its pid."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return int(stat_line.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _host() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _owner() -> str:
    """This process as the owner part of a temporary name: host-pid-start."""
    return f"{_host()}-{os.getpid()}-{_process_start(os.getpid())}"


def _owner_gone(name: str, marker: str) -> bool:
    """Whether the process named in a temporary directory's name has ended. Names
    without an owner (older trajreg) and other hosts' directories are never stale."""
    match = _OWNER.match(name.split(marker, 1)[1])
    if match is None or match.group(1) != _host():
        return False
    pid, start = int(match.group(2)), int(match.group(3))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    now = _process_start(pid)
    return bool(start and now and now != start)  # the pid was reused


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (not thread-safe; rare)
    os.umask(mask)
    return mask


def _temp_dir(parent: Path, prefix: str, mode: int | None = None) -> Path:
    """``mkdtemp`` named ``PREFIX+OWNER-*`` with the permissions a plain mkdir would
    give (``mode``, else 0o777 less the umask) rather than mkdtemp's 0o700."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{_owner()}-", dir=parent))
    os.chmod(path, (0o777 & ~_umask()) if mode is None else mode)
    return path


def remove_stale(out: Path) -> int:
    """Remove the temporary directories beside ``out`` (``.NAME.partial-*``,
    ``.NAME.tmp-analyze-*``) whose owner process has ended; the number removed."""
    out = Path(out)
    n = 0
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return 0
    for path in entries:
        for marker in (PARTIAL, ANALYZE_TMP):
            head = f".{out.name}{marker}"
            if (path.name.startswith(head) and not path.is_symlink() and path.is_dir()
                    and _owner_gone(path.name[len(out.name) + 1:], marker)):
                shutil.rmtree(path, ignore_errors=True)
                n += 1
    return n


def check_new_out(out: Path) -> Path:
    """``out`` as a run directory to create: ``UserError`` when it exists or a path
    component above it is a file (checked before any training)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise UserError(f"output directory already exists: {out}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create run directory {out}: {parent} is not a "
                                "directory")
            break
    return out


def partial_dir(out: Path) -> Path:
    """A fresh ``.NAME.partial-*`` directory beside ``out``, to rename to ``out`` once
    complete with ``finish_dir`` (``atomic_dir`` does both; the integrations, whose runs
    span many framework callbacks, call the two steps themselves). Partial directories
    of killed runs to the same ``out`` are removed first."""
    out = check_new_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out)
        return _temp_dir(out.parent, f".{out.name}{PARTIAL}")
    except OSError as exc:
        raise UserError(f"cannot create run directory {out}: "
                        f"{exc.strerror or exc}") from None


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where the C library, kernel or file system lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def finish_dir(tmp: Path, out: Path) -> None:
    """Write checksums.json of the complete run ``tmp`` (``write_manifest``) and rename
    it to ``out``, never replacing an ``out`` that appeared meanwhile (``UserError``;
    ``tmp`` is left for the caller to remove)."""
    write_manifest(tmp)
    appeared = UserError(f"output directory {out} appeared while this run was being "
                         "written (another trajreg run to the same --out?); this run "
                         "was discarded")
    try:
        if _renameat2(tmp, out, _RENAME_NOREPLACE):
            return
        if out.exists() or out.is_symlink():  # no renameat2: the small race remains
            raise appeared
        os.rename(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise appeared from None
        raise


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; rename it to ``out`` on success.

    On an exception (an interrupt included) the temporary directory is removed and
    ``out`` is not created.
    """
    tmp = partial_dir(out)
    try:
        yield tmp
        finish_dir(tmp, Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def versions() -> dict[str, str]:
    """The trajreg and torch versions, for config.yaml."""
    try:
        mine = version("trajreg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        mine = "unknown"
    return {"trajreg": mine, "torch": str(torch.__version__)}


def write_config(run_dir: Path, sections: dict[str, Any]) -> None:
    """config.yaml: the run's resolved config sections (``trajreg run``: every section of
    its RunConfig; integrations: ``external`` facts, ``record`` and ``analysis``) and the
    versions that wrote it. One shape for both, read by ``read_config``."""
    payload = {**sections, "versions": versions()}
    text = yaml.safe_dump(payload, sort_keys=False)
    replace_atomic(Path(run_dir) / CONFIG, lambda tmp: tmp.write_text(text))


@dataclass
class RunDirConfig:
    """config.yaml read back: the RunConfig of a ``trajreg run`` (None for a run an
    integration recorded), the analysis options and record mode of every run, and
    the integration's facts (``external``)."""

    run: RunConfig | None
    analysis: AnalysisConfig
    record_mode: str
    external: dict[str, Any] | None = None


def read_config(run_dir: Path) -> RunDirConfig:
    """The run's config.yaml (``DamagedRun`` naming the file when it is garbled)."""
    path = Path(run_dir) / CONFIG
    try:
        raw = parse_yaml(path.read_text(), str(path))
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {path}: missing") from None
    except UnicodeDecodeError as exc:
        raise DamagedRun(f"run directory damaged: {path}: not valid YAML (not UTF-8 text: "
                         f"{exc.reason} at byte {exc.start})") from None
    except ConfigError as exc:  # parse_yaml's message names the file
        raise DamagedRun(f"run directory damaged: {exc}") from None
    raw.pop("versions", None)
    external = raw.pop("external", None)
    try:
        if external is not None:
            cfg = load_config({"analysis": raw.get("analysis", {}),
                               "record": raw.get("record", {})}, require_sections=False)
            return RunDirConfig(None, cfg.analysis, cfg.record.mode, external)
        cfg = load_config(raw, require_sections=False)
    except ConfigError as exc:
        raise DamagedRun(f"run directory damaged: {path}: {exc}") from None
    return RunDirConfig(cfg, cfg.analysis, cfg.record.mode)


def write_data_facts(run_dir: Path, data: Any) -> None:
    """data.json: the data set's ``facts`` (its name and task first), for a set that has
    any (the token sets: the vocabulary as one string of characters, in id order, the
    corpus' source, size and SHA-256); nothing for the others."""
    facts = getattr(data, "facts", None)
    if facts:
        payload = {"name": data.name, "task": data.task, "n_classes": data.n_classes,
                   **facts}
        replace_atomic(Path(run_dir) / DATA_FACTS, lambda tmp: tmp.write_text(
            json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"))


def read_data_facts(run_dir: Path) -> dict[str, Any] | None:
    """data.json read back (None: the run has none)."""
    path = Path(run_dir) / DATA_FACTS
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _damaged(path, f"not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise _damaged(path, "not a mapping")
    return payload


def write_state(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's parameters and buffers (returned), saved to ``path``."""
    state = {name: v.detach().cpu().clone() for name, v in model.state_dict().items()}
    # serialised in memory, then written by Python: torch.save straight to a file
    # reports a full disk as an opaque RuntimeError, a write an OSError(ENOSPC)
    buf = io.BytesIO()
    torch.save(state, buf)
    replace_atomic(Path(path), lambda tmp: tmp.write_bytes(buf.getbuffer()))
    return state


def write_final_state(run_dir: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """final_state.pt: a CPU copy of the model's parameters and buffers (returned)."""
    return write_state(Path(run_dir) / FINAL_STATE, model)


def read_final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    path = Path(run_dir) / FINAL_STATE
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {path}: missing") from None
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise DamagedRun(f"run directory damaged: {path}: unreadable ({exc})") from None


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    replace_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))


def read_metrics(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / METRICS
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {path}: missing") from None
    except Exception as exc:  # pyarrow's errors for a damaged file vary
        raise DamagedRun(f"run directory damaged: {path}: unreadable ({exc})") from None


def write_trainlog(run_dir: Path, log: Any) -> None:
    """trainlog.parquet: step, epoch, lr and loss of every step (the one-pass modes'
    metrics hold only the measured steps; the window and re-analysis need all)."""
    table = pd.DataFrame({"step": range(len(log.loss)), "epoch": log.epoch, "lr": log.lr,
                          "loss": log.loss})
    write_parquet(Path(run_dir) / TRAINLOG, table)


def write_outputs(run_dir: Path, table: pd.DataFrame, summary: Summary, *,
                  figures: bool = True, tensorboard: bool = False) -> None:
    """metrics.parquet, the figures, TensorBoard events and, last, summary.json."""
    run_dir = Path(run_dir)
    write_parquet(run_dir / METRICS, table)
    if summary.analysed and figures:
        from trajreg.run.figures import write_figures

        write_figures(run_dir, table, summary.to_dict())
    if summary.analysed and tensorboard:
        from trajreg.run.tensorboard import write_tensorboard

        write_tensorboard(run_dir, table, summary.to_dict())
    write_summary(run_dir, summary)


def require_run_dir(path: Path) -> Path:
    """``path`` if it holds a complete run, else a ``UserError`` saying why not (a
    missing summary.json: the run never finished; another missing file: damaged)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not (path / COMPLETE_MARK).is_file():
        if PARTIAL in path.name or not (path / CONFIG).is_file():
            raise UserError(f"{path} is not a complete trajreg run (no {COMPLETE_MARK})")
        raise DamagedRun(f"run directory damaged: {path / COMPLETE_MARK}: missing")
    if _measured_from_checkpoints(path):
        raise UserError(f"{path} was measured from checkpoints (trajreg checkpoints), not "
                        "recorded: measure the checkpoints again for other options")
    for name in (CONFIG, METRICS, FINAL_STATE):
        if not (path / name).is_file():
            raise DamagedRun(f"run directory damaged: {path / name}: missing")
    return path


def _measured_from_checkpoints(path: Path) -> bool:
    """Whether config.yaml is a checkpoint series' (its ``checkpoints`` section)."""
    try:
        raw = yaml.safe_load((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # read_config names what is wrong with it
    return isinstance(raw, dict) and "checkpoints" in raw


def _metric_columns(summary: Summary) -> tuple[str, ...]:
    base = ("step", "loss")
    return base + ("lr", "loss_star", "D", "a", "s") if summary.analysed else base


def _damaged(path: Path, why: str) -> DamagedRun:
    return DamagedRun(f"run directory damaged: {path}: {why}")


def verify_run_dir(path: Path, *, checksums: bool = True) -> Path:
    """``path`` if it holds a complete, undamaged run (checked before it is analysed
    again), else ``DamagedRun`` ("run directory damaged: FILE: why"):

    - config.yaml, summary.json, metrics.parquet (and trainlog.parquet) readable,
      final_state.pt an intact archive (its CRCs);
    - their facts agreeing: the record mode of config.yaml is the one summary.json
      names, metrics.parquet holds the steps summary.json counts (every step, or
      steps among them beside a trainlog.parquet of every step), and the columns
      the analysis reads are finite (``_check_metrics``);
    - the record mode's own files in trajectory/ (``RecordMode.verify``: store its
      sidecar, segment headers and sizes; sample and sketch their sample.json, the
      sizes of their files, the sketch's stores; an FSDP2 run's per-rank files);
    - every file against checksums.json (``verify_manifest``), where the run has one;
      a run without it (written by an older trajreg) has its trajectory's own
      checksums read instead (store mode, the sketch's stores).

    ``checksums=False`` skips reading file contents for checksums (sizes and
    structure only). Checking the checksums costs one pass over the run's files.
    """
    path = require_run_dir(path)
    conf = read_config(path)
    summary = read_summary(path)
    table = read_metrics(path)
    for column in _metric_columns(summary):
        if column not in table.columns:
            raise _damaged(path / METRICS, f"no column {column!r}")
    trainlog = None
    if (path / TRAINLOG).is_file():
        try:
            trainlog = pd.read_parquet(path / TRAINLOG, columns=["step", "epoch", "lr", "loss"])
        except Exception as exc:  # pyarrow's errors for a damaged file vary
            raise _damaged(path / TRAINLOG, f"unreadable ({exc})") from None
    state = path / FINAL_STATE
    try:
        with zipfile.ZipFile(state) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise _damaged(state, f"not a torch state file ({exc})") from None
    if bad is not None:
        raise _damaged(state, f"checksum mismatch in {bad}")
    if conf.record_mode != summary.record_mode:
        raise _damaged(path / CONFIG, f"record.mode is {conf.record_mode}, but summary.json "
                                      f"says the run was recorded in mode "
                                      f"{summary.record_mode}")
    _check_metrics(path, summary, table, trainlog)
    manifest = _has_manifest(path)
    _verify_mode_files(path, conf, summary.n_steps, checksums and not manifest)
    if manifest:
        verify_manifest(path, checksums=checksums)
    return path


def _verify_mode_files(path: Path, conf: RunDirConfig, n_steps: int, checksums: bool) -> None:
    """The record mode's ``verify`` of trajectory/ (a run that did not keep it: none)."""
    from trajreg.record.modes import get_mode

    traj = path / TRAJECTORY
    if not kept_trajectory(conf):
        if traj.exists():
            raise _damaged(traj, "present, but config.yaml says record.keep_trajectory: "
                                 "false")
        return
    try:
        mode = get_mode(conf.record_mode)
    except ValueError as exc:  # pragma: no cover - read_config validated the mode
        raise _damaged(path / CONFIG, str(exc)) from None
    try:
        mode.verify(traj, n_steps, checksums)
    except FileNotFoundError as exc:
        if exc.filename:
            raise _damaged(Path(exc.filename), "missing") from None
        raise DamagedRun(f"run directory damaged: {exc}") from None
    except DamagedRun as exc:
        raise DamagedRun(f"run directory damaged: {exc}") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise _damaged(traj, f"unreadable ({type(exc).__name__}: {exc})") from None


# columns the analysis reads that a finished run always holds finite (a diverged run:
# but on its last row, where x* is the iterate before the step that diverged)
_FINITE = ("step", "lr", "loss", "D", "a", "s")


def _check_metrics(path: Path, summary: Summary, table: pd.DataFrame,
                   trainlog: pd.DataFrame | None) -> None:
    """metrics.parquet (and trainlog.parquet) against summary.json: the steps it counts
    and its epoch ends, and the inputs of the analysis finite."""
    metrics = path / METRICS
    T = summary.n_steps
    ends = list(summary.epoch_ends)
    if any(not isinstance(e, int) for e in ends) or ends != sorted(set(ends)) or (
            ends and not (0 < ends[0] and ends[-1] <= T)):
        raise _damaged(path / SUMMARY, f"epoch_ends {ends} do not fit its {T} steps")
    if len(summary.full_loss) != len(ends) + 1:
        raise _damaged(path / SUMMARY, f"{len(summary.full_loss)} full losses for "
                                       f"{len(ends)} epoch ends")

    def steps_of(frame: pd.DataFrame, file: Path) -> np.ndarray:
        column = frame["step"]
        if not pd.api.types.is_integer_dtype(column.dtype):
            raise _damaged(file, f"column 'step' is {column.dtype}, not integers")
        return column.to_numpy()

    steps = steps_of(table, metrics)
    if trainlog is not None:
        log_steps = steps_of(trainlog, path / TRAINLOG)
        if len(log_steps) != T or not (log_steps == np.arange(T)).all():
            raise _damaged(path / TRAINLOG, f"holds {len(log_steps)} rows, not steps 0-{T - 1} "
                                            f"(summary.json says {T} steps)")
        if len(steps) and not (np.all(np.diff(steps) > 0) and steps[0] >= 0
                               and steps[-1] < T):
            raise _damaged(metrics, f"its steps are not increasing steps among 0-{T - 1}")
        for column in ("epoch", "lr", "loss"):
            if not np.all(np.isfinite(trainlog[column].to_numpy(dtype=np.float64))):
                raise _damaged(path / TRAINLOG, f"column {column!r} is not finite")
    elif len(steps) != T or not (steps == np.arange(T)).all():
        raise _damaged(metrics, f"holds {len(steps)} rows, not steps 0-{T - 1} (summary.json "
                                f"says {T} steps, epoch ends {ends})")
    rows = len(table) - 1 if summary.diverged and len(table) else len(table)
    for column in _FINITE if summary.analysed else ("step", "loss"):
        if column not in table.columns:
            continue
        try:
            values = table[column].to_numpy(dtype=np.float64)[:rows]
        except (TypeError, ValueError):
            raise _damaged(metrics, f"column {column!r} is not numeric") from None
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise _damaged(metrics, f"column {column!r} is {values[bad[0]]} at step "
                                    f"{steps[bad[0]]} (not finite)")


def kept_trajectory(conf: RunDirConfig) -> bool:
    """Whether the run kept its trajectory/ (``record.keep_trajectory``, true unless a
    ``trajreg run`` config set it false)."""
    return conf.run is None or conf.run.record.keep_trajectory


def discard_trajectory(run_dir: Path) -> None:
    """Delete a measured run's trajectory/ (``record.keep_trajectory: false``); called
    on the partial directory, so a finished run never shows half of it."""
    path = Path(run_dir) / TRAJECTORY
    if path.is_dir():
        shutil.rmtree(path)


# ------------------------------------------------------------------ checksums.json

_CHUNK = 16 << 20


def _crc32(path: Path, n_bytes: int | None = None) -> int:
    """CRC32 of the first ``n_bytes`` of ``path`` (None: all of it)."""
    crc = 0
    with open(path, "rb") as f:
        while n_bytes is None or n_bytes > 0:
            chunk = f.read(_CHUNK if n_bytes is None else min(n_bytes, _CHUNK))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            if n_bytes is not None:
                n_bytes -= len(chunk)
    return crc


def _files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` by its relative POSIX path, checksums.json and
    ``replace_atomic``'s temporary files left out (symlinks are not followed)."""
    out = {}
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            file = Path(top) / name
            rel = file.relative_to(root).as_posix()
            if rel == MANIFEST or (name.startswith(".") and ".tmp-" in name):
                continue
            if stat.S_ISREG(os.lstat(file).st_mode):
                out[rel] = file
    return out


def _store_covered(directory: Path) -> dict[str, tuple[int, int]]:
    """The segment files of a closed trajectory store in ``directory`` whose data its
    sidecar's CRC32s cover, as ``name: (header bytes, data bytes)`` ({} where there
    is none, or it is of an older format or unfinished: those files get a CRC32)."""
    from trajreg.record.store import FORMAT, SIDECAR, TrajectoryStore

    try:
        meta = json.loads((directory / SIDECAR).read_text())
        if not (isinstance(meta, dict) and meta.get("format") == FORMAT
                and meta.get("closed") is True):
            return {}
        store = TrajectoryStore(directory)
    except (OSError, ValueError, DamagedRun):
        return {}
    covered = {}
    row_bytes = store.d * store.dtype.itemsize
    for (x_off, lr_off), seg in zip(store._offsets, store.meta["segments"], strict=True):
        covered[seg["x"]] = (x_off, seg["rows"] * row_bytes)
        covered[seg["lr"]] = (lr_off, seg["steps"] * 8)
    return covered


def _entry(file: Path, covered: dict[str, tuple[int, int]] | None) -> dict[str, Any]:
    size = os.stat(file).st_size
    if covered is not None and file.name in covered:
        head, data = covered[file.name]
        if size == head + data:
            return {"size": size, "head": head, "head_crc32": _crc32(file, head),
                    "data": "sidecar"}
    return {"size": size, "crc32": _crc32(file)}


def _manifest_crc(files: dict[str, Any]) -> int:
    return zlib.crc32(json.dumps(files, sort_keys=True, separators=(",", ":")).encode())


def write_manifest(run_dir: Path, *, base: Path | None = None) -> None:
    """checksums.json of every file under ``run_dir``: ``{"format", "files": {path:
    entry}, "crc32"}`` with ``crc32`` over the files (so damage to checksums.json is its
    own). An entry is ``{"size", "crc32"}``, or for a segment file of a closed
    trajectory store ``{"size", "head", "head_crc32", "data": "sidecar"}``: its data is
    covered by the CRC32s the writer computed (no second read of the trajectory).

    ``base``: the run ``run_dir`` is a new analysis of (``replace_outputs``): the
    manifest then covers ``run_dir``'s files over ``base``'s, and reuses ``base``'s
    entry for every file that is still ``base``'s (a hard link, or not rewritten)."""
    run_dir = Path(run_dir)
    files = _files(run_dir)
    old: dict[str, Any] = {}
    if base is not None:
        for rel, file in _files(base).items():
            files.setdefault(rel, file)
        with contextlib.suppress(OSError, ValueError, DamagedRun):
            old = _read_manifest(base)
    entries: dict[str, Any] = {}
    covered: dict[Path, dict[str, tuple[int, int]]] = {}
    for rel, file in sorted(files.items()):
        if base is not None and rel in old:
            mine = base / rel
            with contextlib.suppress(OSError):
                if (file == mine or os.path.samefile(file, mine)) \
                        and os.stat(mine).st_size == old[rel].get("size"):
                    entries[rel] = old[rel]
                    continue
        parent = file.parent
        if parent not in covered:
            covered[parent] = _store_covered(parent)
        entries[rel] = _entry(file, covered[parent])
    payload = {"format": MANIFEST_FORMAT, "files": entries, "crc32": _manifest_crc(entries)}
    text = json.dumps(payload, indent=0, sort_keys=True)
    replace_atomic(run_dir / MANIFEST, lambda tmp: tmp.write_text(text))


def _read_manifest(path: Path) -> dict[str, Any]:
    """The ``files`` of ``path``'s checksums.json, checked (``DamagedRun``)."""
    file = path / MANIFEST
    try:
        payload = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRun(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT:
        raise DamagedRun(f"{file}: not a trajreg checksums file")
    files = payload.get("files")
    if not isinstance(files, dict) or payload.get("crc32") != _manifest_crc(files):
        raise DamagedRun(f"{file}: checksum mismatch (its own)")
    for rel, entry in files.items():
        parts = rel.split("/")
        if (not isinstance(entry, dict) or rel == MANIFEST or rel.startswith("/")
                or any(p in ("", ".", "..") for p in parts)
                or not all(_count(entry.get(k)) for k in ("size",) + (
                    ("head", "head_crc32") if entry.get("data") == "sidecar" else ("crc32",)))):
            raise DamagedRun(f"{file}: entry {rel!r} is not valid")
    return files


def _has_manifest(path: Path) -> bool:
    """Whether the run ``path`` has a checksums.json (a dangling link included: damage)."""
    return (path / MANIFEST).exists() or (path / MANIFEST).is_symlink()


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def verify_manifest(path: Path, *, checksums: bool = True) -> bool:
    """Check every file of the run ``path`` against its checksums.json: each listed
    file present with its size and CRC32 (a trajectory store's segment files: the
    header's, and their data against the store's own CRC32s), and no file the analysis
    reads (in trajectory/, or beside it: config, metrics, summary, trainlog, final
    state) unlisted. False where the run has no checksums.json (an older run);
    ``DamagedRun`` ("run directory damaged: FILE: why") on a mismatch.
    ``checksums=False``: sizes only."""
    from trajreg.record.store import TrajectoryStore

    path = Path(path)
    if not _has_manifest(path):
        return False
    try:
        files = _read_manifest(path)
    except OSError as exc:
        raise _damaged(path / MANIFEST, f"unreadable ({exc.strerror or exc})") from None
    except DamagedRun as exc:
        raise DamagedRun(f"run directory damaged: {exc}") from None
    stores: set[Path] = set()
    for rel, entry in sorted(files.items()):
        file = path / rel
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            raise _damaged(file, f"missing (listed in {MANIFEST})") from None
        except OSError as exc:
            raise _damaged(file, f"unreadable ({exc.strerror or exc})") from None
        if not stat.S_ISREG(st.st_mode):
            raise _damaged(file, "not a regular file")
        if st.st_size != entry["size"]:
            raise _damaged(file, f"{st.st_size} bytes, {MANIFEST} says {entry['size']}"
                                 + (" (truncated?)" if st.st_size < entry["size"] else ""))
        if not checksums:
            continue
        sidecar = entry.get("data") == "sidecar"
        try:
            crc = _crc32(file, entry["head"] if sidecar else None)
        except OSError as exc:
            raise _damaged(file, f"unreadable ({exc.strerror or exc})") from None
        if crc != entry["head_crc32" if sidecar else "crc32"]:
            raise _damaged(file, f"checksum mismatch ({'its header, ' if sidecar else ''}"
                                 f"against {MANIFEST})")
        if sidecar:
            stores.add(file.parent)
    for directory in sorted(stores):  # the segments' data against the writer's CRC32s
        try:
            TrajectoryStore(directory).verify()
        except FileNotFoundError as exc:
            raise _damaged(Path(exc.filename or directory), "missing") from None
        except DamagedRun as exc:
            raise DamagedRun(f"run directory damaged: {exc}") from None
    read = {CONFIG, METRICS, SUMMARY, FINAL_STATE, TRAINLOG}
    for rel, file in _files(path).items():
        if rel not in files and (rel in read or rel.startswith(f"{TRAJECTORY}/")):
            raise _damaged(file, f"not in {MANIFEST} (added after the run was written)")
    return True


# ------------------------------------------------------------------ a new analysis, swapped in

def replace_outputs(run_dir: Path, write: Callable[[Path], Any]) -> None:
    """Replace a finished run's outputs all-or-nothing (see the module docstring).

    ``write(stage)`` writes the new files into ``stage``, a hard-linked copy of the run
    beside it, and checksums.json is written there after them (``write_manifest``,
    reusing the old entries of the files left as they were), so it is swapped in with
    them; ``write`` must create files (``replace_atomic``, ``write_outputs``), never
    change one in place, since unchanged files are shared with the run. If it raises
    (an interrupt included), the run is untouched and the copy removed.
    """
    run_dir = Path(run_dir).resolve()  # a symlinked run: swap the directory, not the link
    remove_stale(run_dir)
    stage = _temp_dir(run_dir.parent, f".{run_dir.name}{ANALYZE_TMP}",
                      stat.S_IMODE(os.stat(run_dir).st_mode))
    try:
        linked = _link_tree(run_dir, stage)
        write(stage)
        if (run_dir / MANIFEST).exists():  # an older run without one stays without
            write_manifest(stage, base=run_dir)
        if not (linked and _renameat2(stage, run_dir, _RENAME_EXCHANGE)):
            _move_new_files(stage, run_dir)
    finally:  # after the swap: the old outputs; else the new ones
        shutil.rmtree(stage, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> bool:
    """Fill ``dst`` with hard links to every file under ``src`` (directories with their
    modes, symlinks as symlinks). False, with ``dst`` emptied, where the file system
    cannot hard-link."""
    def fail(exc: OSError) -> None:  # os.walk skips unreadable directories by default
        raise exc

    try:
        for root, dirs, files in os.walk(src, onerror=fail):
            rel = Path(root).relative_to(src)
            for name in list(dirs):
                if (Path(root) / name).is_symlink():
                    dirs.remove(name)
                    files.append(name)
                    continue
                target = dst / rel / name
                target.mkdir()
                os.chmod(target, stat.S_IMODE(os.stat(Path(root) / name).st_mode))
            for name in files:
                os.link(Path(root) / name, dst / rel / name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP,
                             errno.EOPNOTSUPP, errno.EACCES):
            raise
        for entry in list(dst.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return False
    return True


def _move_new_files(stage: Path, run_dir: Path) -> None:
    """The fallback without an atomic swap: rename every file ``write`` created in
    ``stage`` into ``run_dir``, summary.json last (the completion mark)."""
    new = []
    for root, _, files in os.walk(stage):
        for name in files:
            src = Path(root) / name
            dst = run_dir / src.relative_to(stage)
            if not (dst.exists() and os.path.samefile(src, dst)):
                new.append((src, dst))
    new.sort(key=lambda pair: (pair[1] == run_dir / COMPLETE_MARK,
                               pair[1] == run_dir / MANIFEST))
    for src, dst in new:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
