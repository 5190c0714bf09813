"""Regression: `trajreg run` printed nothing until the end without a terminal (and
nothing during the analysis phase); it now prints one line per phase on stderr."""

import subprocess
import sys

import pytest

CONFIG = """\
seed: 0
data: {name: digits, batch_size: 64, subset: 256}
model: {name: mlp, depth: 2, width: 8}
optim: {name: sgd, lr: 0.05}
train: {epochs: 1, threads: 1}
"""


@pytest.mark.slow
def test_run_prints_its_phases_without_a_terminal(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    done = subprocess.run([sys.executable, "-m", "trajreg.cli", "run", "c.yaml", "--out", "r",
                           "--no-figures"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("trajreg: ")]
    assert [line.split()[1] for line in lines] == ["training", "measuring", "writing"], \
        done.stderr
