"""config.yaml edited after the run (record.mode store -> sample) was trusted:
``trajreg analyze`` wrote a summary calling a store run a sample run. The mode
config.yaml names must be the one summary.json names and the one whose files are in
trajectory/ (the mode's ``verify``); with checksums.json the edit is a CRC32 mismatch
too. One line naming the file, exit 2, the run unchanged."""

from __future__ import annotations

import json

import pytest

from tests.regressions._damaged_runs import assert_refused, copy_run, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("mode") / "r", "store")


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("manifest", [True, False])
def test_config_naming_another_mode_is_refused(run, tmp_path, manifest):
    damaged = copy_run(run, tmp_path / "r", manifest=manifest)
    _edit(damaged / "config.yaml", "mode: store", "mode: sample")
    assert_refused(damaged, "config.yaml",
                   "record.mode is sample, but summary.json says the run was recorded in "
                   "mode store")


def test_config_and_summary_naming_another_mode_are_refused(run, tmp_path):
    """Both edited alike, in a run without checksums.json: the trajectory's own files
    say which mode wrote them."""
    damaged = copy_run(run, tmp_path / "r", manifest=False)
    _edit(damaged / "config.yaml", "mode: store", "mode: sample")
    summary = json.loads((damaged / "summary.json").read_text())
    summary["record_mode"] = "sample"
    (damaged / "summary.json").write_text(json.dumps(summary))
    assert_refused(damaged, "trajectory/trajectory.json",
                   "written by another record mode than sample, the mode config.yaml names")
