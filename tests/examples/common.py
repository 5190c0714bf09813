"""What every example's run directory must be: complete, exact, analysable again."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from trajreg.run.rundir import verify_run_dir
from trajreg.run.summary import Summary, read_summary

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """examples/NAME.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_run(out: Path, steps: int, ranks: int | None = None) -> Summary:
    """A complete run of ``steps`` optimizer steps whose every rebuilt loss equals the
    loss computed during training, with finite gamma_hat, that ``trajreg analyze``
    (the command) reads again."""
    verify_run_dir(out)
    summary = read_summary(out)
    assert summary.n_steps == steps
    check = summary.loss_check
    assert check is not None and check["steps"] > 0
    assert check["equal"] == check["steps"], check
    if ranks is not None:
        assert check["ranks"] == ranks
    assert summary.gamma_hat is not None
    assert all(math.isfinite(g) for g in summary.gamma_hat.values()), summary.gamma_hat
    proc = subprocess.run([sys.executable, "-m", "trajreg.cli", "analyze", str(out),
                           "--eps", "0,0.1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "gamma_hat" in proc.stdout
    return summary
