"""A full disk during ``trajreg run`` ended in an OSError traceback; it must be one line
saying so, exit 2, with the partial run directory removed. The disk is filled by
making the run's lowest write (the trajectory writer's block write) fail with ENOSPC;
tests/faults/test_cli_errors.py fills a real tmpfs where it can mount one."""

from __future__ import annotations

import errno
import os

import yaml

from tests.conftest import tiny
from trajreg import cli


def test_disk_full_while_recording_is_one_line_and_leaves_nothing(tmp_path, capsys,
                                                                  monkeypatch):
    from trajreg.record.store import TrajectoryWriter

    def enospc(*_args, **_kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(TrajectoryWriter, "_write", staticmethod(enospc))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"subset": 256}, model={"depth": 2, "width": 8},
                                          train={"epochs": 1})))
    status = cli.main(["run", str(config), "--out", str(tmp_path / "r")])
    *progress, last = capsys.readouterr().err.splitlines()
    assert (status, last) == (2, "trajreg: error: No space left on device (nothing was written)")
    assert all(line.startswith("trajreg: ") and line.endswith(" ...") for line in progress)
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]
