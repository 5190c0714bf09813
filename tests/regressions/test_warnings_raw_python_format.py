"""Issue 20: warnings from ``trajreg`` commands were printed in Python's raw format (the
file path, the category and the source line, on two lines). While ``cli.main`` runs
they are ``trajreg: warning: ...``, one line each; Python's format is restored after it
(library users keep it)."""

from __future__ import annotations

import warnings

import yaml

from tests.conftest import tiny
from trajreg import cli


def test_a_run_warns_in_one_line_and_restores_the_format(tmp_path, capsys, one_thread):
    config = tmp_path / "c.yaml"
    # 24 steps sampled at 0.05 without a minimum: the mode warns before training
    config.write_text(yaml.safe_dump(tiny(record={"mode": "sample", "sample_rate": 0.05,
                                                  "sample_min_steps": 0})))
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        status = cli.main(["run", str(config), "--out", str(tmp_path / "r"), "-q",
                           "--no-figures"])
    assert status == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("trajreg: warning: ") for line in lines), err
    assert "UserWarning" not in err and ".py:" not in err
    assert warnings.showwarning is before
