"""A finished run directory had mode 0700 whatever the umask (tempfile.mkdtemp's
mode survived the rename): other users of a shared results directory could not read
it. It must get the mode a plain mkdir gives: 0777 less the umask."""

from __future__ import annotations

import os
import stat

import yaml

from tests.conftest import tiny
from trajreg import cli


def test_run_directory_follows_the_umask(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"subset": 256}, model={"depth": 2, "width": 8},
                                          train={"epochs": 1})))
    old = os.umask(0o022)
    try:
        assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "--no-figures"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o755
