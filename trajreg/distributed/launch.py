"""``trajreg run`` with ``train.distributed``: launch N ranks, get one run directory.

``run`` runs any run config: one with ``train.distributed`` here, any other in this
process (``trajreg.run.runner.run``, a layer below, which knows nothing of this one).
The launching process (the ``trajreg run`` command, or ``trajreg.run`` and
``trajreg.distributed.run`` called from Python) creates the run's partial directory
(``rundir.partial_dir``, owned by this process, so a killed run's leftovers are removed
by the next run to the same ``--out``), writes config.yaml there, and starts
``trajreg.distributed.agent``: torch.distributed's elastic agent, which starts the ranks
(``trajreg.distributed.worker``). Rank 0 writes the rest of the run directory. Only
when every rank exited 0 and summary.json is there is the directory renamed to
``--out``; otherwise it is removed and a ``DistributedRunError`` names the failed rank
(its exit status or signal, and its own one-line error when it wrote one).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from trajreg.errors import UserError
from trajreg.record.modes import get_mode
from trajreg.run import rundir, runner
from trajreg.run.progress import phase
from trajreg.run.summary import Summary, read_summary
from trajreg.run.trackers import Tracker, attach, mirror, require_trackers, tracker_names
from trajreg.train.config import DistributedConfig, RunConfig
from trajreg.train.size import check_run_disk

STOP_SECONDS = 30.0  # how long a stopped launcher may take to stop its ranks


class DistributedRunError(UserError):
    """A rank of a distributed run failed; the message names it."""


def with_nproc(cfg: RunConfig, nproc: int) -> RunConfig:
    """``cfg`` with ``train.distributed.nproc = nproc`` (``trajreg run --nproc N``); a run
    without a distributed section becomes a DDP run on gloo. Validated again
    (``ConfigError`` when e.g. the batch size does not divide)."""
    cfg = copy.deepcopy(cfg)
    if cfg.train.distributed is None:
        cfg.train.distributed = DistributedConfig()
    cfg.train.distributed.nproc = nproc
    cfg.validate()
    return cfg


def _env(nproc: int) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # holds trajreg/, for the ranks
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def describe_failure(failures: dict, launch_dir: Path, status: int) -> str:
    """One line naming the rank whose failure came first: a rank killed by a signal
    other than SIGTERM (SIGKILL, SIGSEGV ...: from outside; the agent stops ranks with
    SIGTERM), else the rank whose own error line was written first (a rank that loses
    its peer raises too, later), else a non-zero exit, else SIGTERM."""
    if not failures:
        return f"distributed run failed: the launcher exited with status {status}"

    def order(item: tuple[str, dict]) -> tuple:
        rank, f = item
        code = f.get("exitcode") or 0
        error = launch_dir / f"rank-{rank}.error"
        if code < 0 and f.get("signal") != "SIGTERM":
            key: tuple = (0, f.get("timestamp") or 0)
        elif error.is_file():
            key = (1, error.stat().st_mtime_ns)
        else:
            key = (2 if code > 0 else 3, f.get("timestamp") or 0)
        return (*key, int(rank))

    rank, f = min(failures.items(), key=order)
    code = f.get("exitcode")
    how = (f"was killed by {f.get('signal') or f'signal {-code}'}" if code is not None
           and code < 0 else f"exited with status {code}")
    message = f"distributed run failed: rank {rank} (pid {f.get('pid')}) {how}"
    error = launch_dir / f"rank-{rank}.error"
    if error.is_file():
        message += f": {error.read_text().strip()}"
    others = sorted(int(r) for r in failures if r != rank)
    if others:
        message += f" (then rank{'s' if len(others) > 1 else ''} " \
                   f"{', '.join(map(str, others))} failed too)"
    return message + "; the other ranks were stopped and no run directory was written"


def launch(nproc: int, worker_args: list[str], launch_dir: Path,
           module: str = "trajreg.distributed.worker") -> None:
    """Run ``python -m MODULE WORKER_ARGS`` on ``nproc`` ranks through the agent; return
    when every rank exited 0, else ``DistributedRunError``. Interrupted (SIGINT or
    SIGTERM in this process), the agent is stopped with its ranks first."""
    failures_file = launch_dir / "failures.json"
    cmd = [sys.executable, "-m", "trajreg.distributed.agent", "--nproc", str(nproc),
           "--failures", str(failures_file), "--module", module, "--", *worker_args]
    proc = subprocess.Popen(cmd, env=_env(nproc), stdin=subprocess.DEVNULL)
    try:
        status = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: the agent stops its ranks on SIGTERM
            proc.terminate()
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if status != 0:
        failures = {}
        if failures_file.is_file():
            try:
                failures = json.loads(failures_file.read_text())
            except ValueError:
                pass
        raise DistributedRunError(describe_failure(failures, launch_dir, status))


def run(cfg: RunConfig, out: str | Path, *, figures: bool = True,
        progress: bool | None = None, on_epoch: Callable[[int], None] | None = None,
        tensorboard: bool = False, trackers: Sequence[Tracker] = ()) -> tuple[Path, Summary]:
    """Train, record, analyse any run config; return the finished run directory and its
    summary (``trajreg.run``, the ``trajreg run`` command, a study's runs). With
    ``train.distributed`` on its N processes (``run_distributed``; ``on_epoch`` is not
    called), else in this process (``trajreg.run.runner.run``, the options as there)."""
    if cfg.train.distributed is None:
        return runner.run(cfg, out, figures=figures, progress=progress, on_epoch=on_epoch,
                          tensorboard=tensorboard, trackers=trackers)
    check_run_disk(cfg, out)  # what the record mode writes fits the output's disk
    return run_distributed(cfg, out, figures=figures, progress=progress,
                           tensorboard=tensorboard, trackers=trackers)


def run_distributed(cfg: RunConfig, out: str | Path, *, figures: bool = True,
                    progress: bool | None = None, tensorboard: bool = False,
                    trackers: Sequence[Tracker] = ()) -> tuple[Path, Summary]:
    """Train ``cfg`` on ``cfg.train.distributed.nproc`` processes; return the finished run
    directory and its summary (``runner.run``'s contract; this process logs the finished
    run to W&B and MLflow, the ranks write TensorBoard's events)."""
    from trajreg.train.loop import require_device
    from trajreg.train.size import check_run_size

    dcfg = cfg.train.distributed
    if dcfg is None:
        raise ValueError("run_distributed: the config has no train.distributed section")
    cfg.validate()
    out = Path(out)
    mode = get_mode(cfg.record.mode).from_config(cfg.record, cfg.seed)
    with warnings.catch_warnings():  # rank 0 plans with the real step count and warns
        warnings.simplefilter("ignore")
        mode.plan(0, cfg.analysis)  # a reference the mode refuses: ConfigError, nothing run
    require_device(cfg.train.device)
    check_run_size(cfg)
    names = tracker_names(trackers, tensorboard)
    require_trackers(names)
    runs = attach(names)
    launch_dir = Path(tempfile.mkdtemp(prefix="trajreg-launch-"))
    try:
        with rundir.atomic_dir(out) as tmp:
            rundir.write_config(tmp, cfg.to_dict())
            args = [str(tmp), "--launch-dir", str(launch_dir)]
            args += ["--no-figures"] if not figures else []
            args += ["--tensorboard"] if "tensorboard" in names else []
            args += ["--quiet"] if progress is False else []
            phase(f"launching {dcfg.nproc} processes ({dcfg.strategy}, {dcfg.backend})",
                  progress)
            launch(dcfg.nproc, args, launch_dir)
            if not (tmp / rundir.COMPLETE_MARK).is_file():
                raise DistributedRunError("distributed run failed: every rank exited 0 but "
                                          f"rank 0 wrote no {rundir.COMPLETE_MARK}")
            if not cfg.record.keep_trajectory:  # every rank's shards, once measured
                rundir.discard_trajectory(tmp)
    finally:
        shutil.rmtree(launch_dir, ignore_errors=True)
    mirror(out, names, runs)
    return out, read_summary(out)
