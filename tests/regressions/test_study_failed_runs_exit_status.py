"""A study with failed runs exited 0; the command must exit 3 and say how many."""

from __future__ import annotations

import pytest
import yaml

from tests.study.fakes import small_raw
from trajreg.study.cli import main

pytestmark = pytest.mark.slow


def test_exit_status_3_and_the_count(tmp_path, capsys, one_thread):
    raw = small_raw(seeds=[0])
    raw["grid"]["model.name"] = ["mlp", "vgg"]  # vgg cannot take 8x8 digits: fails at build
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["study", str(path), "--out", str(tmp_path / "s"), "--executor", "serial"])
    out, err = capsys.readouterr()
    assert code == 3
    assert "2 of 4 runs finished, 2 failed (4 run now)" in out
    assert "trajreg: 2 of 4 runs failed" in err
    # a study whose runs all finish exits 0
    raw["grid"]["model.name"] = ["mlp"]
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", str(path), "--out", str(tmp_path / "t"),
                 "--executor", "serial"]) == 0
