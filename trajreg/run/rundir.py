"""The run directory: its layout, and the one module that writes and reads it.

Layout (the contract ``trajreg analyze``, reports and integrations rely on)::

    config.yaml        the resolved config, with trajreg and torch versions
    metrics.parquet    one row per measured optimizer step
    summary.json       the analysis and run facts (``trajreg.run.summary.Summary``)
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

``verify_run_dir`` checks a run before it is analysed again: every file readable,
the trajectory's structure and checksums (``DamagedRun`` naming file and fault).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
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
TRAINLOG = "trainlog.parquet"  # every step's loss, epoch, lr where metrics hold a sample
COMPLETE_MARK = SUMMARY  # the last file a run writes

__all__ = ["COMPLETE_MARK", "RunDirConfig", "atomic_dir", "check_new_out",
           "discard_trajectory", "finish_dir", "kept_trajectory", "partial_dir",
           "read_config", "read_final_state", "read_metrics",
           "read_summary", "remove_stale", "replace_outputs",
           "require_run_dir", "verify_run_dir", "versions", "write_config",
           "write_final_state", "write_outputs", "write_parquet",
           "write_summary"]

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
    """Rename the complete run ``tmp`` to ``out``, never replacing an ``out`` that
    appeared meanwhile (``UserError``; ``tmp`` is left for the caller to remove)."""
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


def write_final_state(run_dir: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """final_state.pt: a CPU copy of the model's parameters and buffers (returned)."""
    state = {name: v.detach().cpu().clone() for name, v in model.state_dict().items()}
    # serialised in memory, then written by Python: torch.save straight to a file
    # reports a full disk as an opaque RuntimeError, a write an OSError(ENOSPC)
    buf = io.BytesIO()
    torch.save(state, buf)
    replace_atomic(Path(run_dir) / FINAL_STATE, lambda tmp: tmp.write_bytes(buf.getbuffer()))
    return state


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
    for name in (CONFIG, METRICS, FINAL_STATE):
        if not (path / name).is_file():
            raise DamagedRun(f"run directory damaged: {path / name}: missing")
    return path


def _metric_columns(summary: Summary) -> tuple[str, ...]:
    base = ("step", "loss")
    return base + ("lr", "loss_star", "D", "a", "s") if summary.analysed else base


def verify_run_dir(path: Path, *, checksums: bool = True) -> Path:
    """``path`` if it holds a complete, undamaged run (checked before it is analysed
    again): config.yaml, summary.json and metrics.parquet readable, final_state.pt an
    intact archive (its CRCs), and in record mode store the trajectory's sidecar,
    segment headers and sizes, and (``checksums``) its data against the sidecar's
    CRC32s (an FSDP2 run's per-rank stores: ``trajreg.distributed.shards``).
    ``DamagedRun`` ("run directory damaged: FILE: why") otherwise; reading the
    trajectory costs one pass over it."""
    path = require_run_dir(path)
    conf = read_config(path)
    summary = read_summary(path)
    table = read_metrics(path)
    for column in _metric_columns(summary):
        if column not in table.columns:
            raise DamagedRun(f"run directory damaged: {path / METRICS}: no column {column!r}")
    if (path / TRAINLOG).is_file():
        try:
            pd.read_parquet(path / TRAINLOG, columns=["step", "epoch", "lr", "loss"])
        except Exception as exc:  # pyarrow's errors for a damaged file vary
            raise DamagedRun(f"run directory damaged: {path / TRAINLOG}: unreadable "
                             f"({exc})") from None
    state = path / FINAL_STATE
    try:
        with zipfile.ZipFile(state) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DamagedRun(f"run directory damaged: {state}: not a torch state file "
                         f"({exc})") from None
    if bad is not None:
        raise DamagedRun(f"run directory damaged: {state}: checksum mismatch in {bad}")
    if conf.record_mode == "store" and kept_trajectory(conf):
        from trajreg.distributed.shards import is_sharded, verify_sharded

        if is_sharded(path / TRAJECTORY):  # an FSDP2 run: one store per rank
            verify_sharded(path / TRAJECTORY, summary.n_steps, checksums)
        else:
            _verify_trajectory(path / TRAJECTORY, summary.n_steps, checksums)
            if (path / TRAJECTORY / "grad").is_dir():  # gradients: g_0 .. g_{T-1}, T rows
                _verify_trajectory(path / TRAJECTORY / "grad", summary.n_steps - 1, checksums)
    return path


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


def _verify_trajectory(directory: Path, n_steps: int, checksums: bool) -> None:
    from trajreg.record.store import SIDECAR, TrajectoryStore

    sidecar = directory / SIDECAR
    try:
        store = TrajectoryStore(directory)
        if not store.closed:
            raise DamagedRun(f"{sidecar}: not closed (recording did not finish)")
        if store.rows < n_steps + 1:
            raise DamagedRun(f"{sidecar}: holds {store.rows} iterates, the run took "
                             f"{n_steps} steps")
        if checksums:
            store.verify()
    except FileNotFoundError:
        raise DamagedRun(f"run directory damaged: {sidecar}: missing") from None
    except DamagedRun as exc:
        raise DamagedRun(f"run directory damaged: {exc}") from None


# ------------------------------------------------------------------ a new analysis, swapped in

def replace_outputs(run_dir: Path, write: Callable[[Path], Any]) -> None:
    """Replace a finished run's outputs all-or-nothing (see the module docstring).

    ``write(stage)`` writes the new files into ``stage``, a hard-linked copy of the run
    beside it; it must create files (``replace_atomic``, ``write_outputs``), never
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
    new.sort(key=lambda pair: pair[1] == run_dir / COMPLETE_MARK)
    for src, dst in new:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
