"""``trajreg analyze`` printed nothing while it verified, re-measured and wrote a run
(seconds to minutes in replay mode); without a terminal there was no sign of life.
It must print one line per phase on stderr (``-q`` silences them)."""

from __future__ import annotations

import yaml

from tests.conftest import tiny
from trajreg import cli


def test_one_line_per_phase_on_stderr(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"subset": 256}, model={"depth": 2, "width": 8},
                                          train={"epochs": 2})))
    run = tmp_path / "r"
    assert cli.main(["run", str(config), "--out", str(run), "--no-figures"]) == 0
    capsys.readouterr()
    assert cli.main(["analyze", str(run), "--reference", "best"]) == 0
    first, *measuring, last = capsys.readouterr().err.splitlines()
    assert (first, last) == (f"trajreg: verifying {run} ...", f"trajreg: writing {run} ...")
    assert all(line.startswith("trajreg: measuring (store) against x_") for line in measuring)
    assert cli.main(["analyze", str(run), "-q"]) == 0
    assert capsys.readouterr().err == ""
