"""Helpers of the run-directory damage regressions (issue 20): a tiny finished run
per record mode, and ``trajreg analyze`` on it with its outcome."""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from pathlib import Path

from tests.conftest import tiny
from trajreg import cli

RECORD = {
    "store": {"mode": "store"},
    "sample": {"mode": "sample", "sample_min_steps": 0, "sample_rate": 0.5},
    "sketch": {"mode": "sketch", "sketch_check_steps": 0, "sketch_sample_rate": 0.3,
               "sketch_dim": 16},
}


def make_run(out: Path, mode: str, epochs: int = 2) -> Path:
    """A finished run of 8 steps an epoch (digits subset 256 in batches of 32, an MLP
    of width 8) recorded in ``mode``, without figures."""
    import torch

    from trajreg.run.runner import run
    from trajreg.train.config import load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a tiny sample's "insufficient samples"
            cfg = load_config(tiny(data={"subset": 256, "batch_size": 32},
                                   model={"depth": 2, "width": 8, "norm": "none"},
                                   train={"epochs": epochs}, record=RECORD[mode]))
            path, _ = run(cfg, out, figures=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    return path


def copy_run(src: Path, dst: Path, *, manifest: bool = True) -> Path:
    """A copy of the run ``src``; ``manifest=False``: without checksums.json, as an
    older trajreg wrote it."""
    shutil.copytree(src, dst)
    if not manifest:
        (dst / "checksums.json").unlink(missing_ok=True)
    return dst


def analyze(run: Path, *args: str) -> tuple[int, str, dict[str, bytes]]:
    """``trajreg analyze RUN -q ARGS``: exit status, stderr, and the run's files after."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = cli.main(["analyze", str(run), "-q", *args])
    return status, err.getvalue(), files(run)


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def damaged_line(run: Path, name: str) -> str:
    """The start of the one line a damaged ``name`` of ``run`` gives."""
    return f"trajreg: error: run directory damaged: {run / name}: "


def assert_refused(run: Path, name: str, why: str, *args: str) -> None:
    """``trajreg analyze RUN ARGS`` refuses the damaged ``run``: exit 2, the one line
    ``damaged_line(run, name) + why``, and the run's files as they were."""
    before = files(run)
    status, err, after = analyze(run, *args)
    assert status == 2, err
    assert err.splitlines() == [damaged_line(run, name) + why]
    assert after == before
