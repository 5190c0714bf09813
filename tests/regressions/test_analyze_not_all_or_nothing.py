"""``trajreg analyze`` wrote metrics.parquet, then the figures, then summary.json into
the run: a failure in between (figures failing, an interrupt) left new metrics beside
the old summary. It must replace the outputs all-or-nothing: a failure after the new
metrics are computed leaves every file byte-identical."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli
from trajreg.run import rundir


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("aon")
    config = base / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"subset": 256},
                                          model={"depth": 2, "width": 8, "norm": "none"},
                                          train={"epochs": 2})))
    assert cli.main(["run", str(config), "--out", str(base / "r"), "-q"]) == 0
    return base / "r"


@pytest.fixture
def run(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path / "r")
    return tmp_path / "r"


def _files(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fault, status, line", [
    (RuntimeError("figures failed"), 1, "trajreg: internal error: RuntimeError: figures "
                                        "failed (please report it; rerun with --debug for "
                                        "the traceback)"),
    (KeyboardInterrupt(), 130, "trajreg: interrupted"),
])
@pytest.mark.parametrize("swap", ["exchange", "rename"])
def test_failure_after_the_metrics_changes_nothing(run, capsys, monkeypatch, fault, status,
                                                   line, swap):
    import trajreg.run.figures

    if swap == "rename":  # no renameat2: the one-by-one fallback
        monkeypatch.setattr(rundir, "_renameat2", lambda *a: False)
    computed = []
    real_parquet = rundir.write_parquet

    def parquet_then_note(path, table):
        real_parquet(path, table)
        computed.append(path.name)

    def figures_fail(*_a, **_k):
        raise fault

    monkeypatch.setattr(rundir, "write_parquet", parquet_then_note)
    monkeypatch.setattr(trajreg.run.figures, "write_figures", figures_fail)
    before = _files(run)
    assert cli.main(["analyze", str(run), "--eps", "0,0.3", "--window", "0:6", "-q"]) == status
    assert capsys.readouterr().err == line + "\n"
    assert computed == ["metrics.parquet"]  # the new metrics were written, into the stage
    assert _files(run) == before
    assert [p.name for p in run.parent.iterdir()] == ["r"]


def test_success_replaces_metrics_and_summary_together(run):
    before = _files(run)
    assert cli.main(["analyze", str(run), "--window", "0:6", "--delta", "0.01", "-q"]) == 0
    after = _files(run)
    assert rundir.read_summary(run).window == [0, 6]
    assert after["summary.json"] != before["summary.json"]
    assert after["metrics.parquet"] != before["metrics.parquet"]  # r with the new delta
    for unchanged in ("config.yaml", "final_state.pt", "trajectory/x-0000.npy"):
        assert after[unchanged] == before[unchanged]
    rundir.verify_run_dir(run)
