"""Options every command takes wherever they stand: ``-q`` and ``--debug`` before or after
the command, ``trajreg --version``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny
from trajreg import __version__
from trajreg.cli import main, parser


@pytest.mark.parametrize("argv, quiet, debug", [
    (["analyze", "r"], False, False),
    (["-q", "analyze", "r"], True, False),
    (["analyze", "r", "-q"], True, False),
    (["--debug", "study", "s"], False, True),
    (["study", "s", "--debug", "--quiet"], True, True),
    (["-q", "--debug", "checkpoints", "a", "b", "--out", "o"], True, True),
    (["report", "d", "-q"], True, False),
])
def test_quiet_and_debug_before_or_after_the_command(argv, quiet, debug):
    args = parser().parse_args(argv)
    assert (args.quiet, args.debug) == (quiet, debug)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"trajreg {__version__}"


def test_quiet_before_the_command_silences_a_run(tmp_path: Path):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"epochs": 1})))
    proc = subprocess.run([sys.executable, "-m", "trajreg.cli", "-q", "run", str(config),
                           "--out", str(tmp_path / "run"), "--no-figures"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "run directory:" in proc.stdout
