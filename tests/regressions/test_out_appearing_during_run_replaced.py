"""Two ``trajreg run`` to the same --out: the one finishing second renamed its partial
directory over the first one's when that was empty (rename(2) replaces an empty
directory) and died with an OSError traceback otherwise. The final rename must never
replace anything, and say so in one line (exit 2, this run discarded)."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli
from trajreg.run import rundir


@pytest.mark.parametrize("theirs", [[], ["summary.json"]])
def test_out_appearing_during_the_run_is_not_replaced(tmp_path, capsys, monkeypatch, theirs):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"subset": 256}, model={"depth": 2, "width": 8},
                                          train={"epochs": 1})))
    out = tmp_path / "r"
    real = rundir.write_final_state

    def and_another_run_finishes(run_dir, model):  # the other process, while we train
        out.mkdir()
        for name in theirs:
            (out / name).write_text("theirs")
        return real(run_dir, model)

    monkeypatch.setattr(rundir, "write_final_state", and_another_run_finishes)
    assert cli.main(["run", str(config), "--out", str(out)]) == 2
    *progress, last = capsys.readouterr().err.splitlines()
    assert last == (f"trajreg: error: output directory {out} appeared while this run was "
                    "being written (another trajreg run to the same --out?); this run was "
                    "discarded")
    assert all(line.startswith("trajreg: ") and line.endswith(" ...") for line in progress)
    assert sorted(p.name for p in out.iterdir()) == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "r"]
