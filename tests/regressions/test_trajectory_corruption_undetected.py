"""Rows of trajectory/x-0000.npy changed on disk after the run (a bad disk, a stray
write) were analysed as if they were the trajectory: ``trajreg analyze --reference
best`` printed numbers from garbage. The store keeps a CRC32 of each segment's rows;
analysis must refuse such a run in one line naming the file and the rows."""

from __future__ import annotations

import numpy as np
import yaml

from tests.conftest import tiny
from trajreg import cli


def test_overwritten_rows_are_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"subset": 256, "batch_size": 8},
                                          model={"depth": 2, "width": 8}, train={"epochs": 1})))
    run = tmp_path / "r"
    assert cli.main(["run", str(config), "--out", str(run), "--no-figures"]) == 0
    x = np.load(run / "trajectory" / "x-0000.npy", mmap_mode="r+")
    x[5:10] = np.random.default_rng(0).standard_normal((5, x.shape[1]))
    x.flush()
    del x
    capsys.readouterr()
    assert cli.main(["analyze", str(run), "--reference", "best"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"trajreg: error: run directory damaged: {run / 'trajectory' / 'x-0000.npy'}: "
        "checksum mismatch (rows 0-32)")
