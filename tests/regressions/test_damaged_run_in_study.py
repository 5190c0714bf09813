"""A damaged run inside a study (a truncated summary.json) made ``trajreg report`` and
resuming fail; it must be reported as damaged and skipped, and resuming must move it
aside (nothing deleted) and run it again."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.study.fakes import fake_study, small_raw
from trajreg.study.execute import run_study
from trajreg.study.layout import DAMAGED_TAG, inspect_run, run_path, runs_dir
from trajreg.study.report import write_report
from trajreg.study.spec import load_study


def _damage(study_dir, rid):
    path = run_path(study_dir, rid) / "summary.json"
    path.write_text(path.read_text()[:40])  # truncated mid-way


def test_report_marks_the_run_damaged_and_goes_on(tmp_path):
    study = load_study(small_raw(seeds=[0, 1, 2]))
    fake_study(tmp_path, study)
    victim = study.runs[0].run_id
    _damage(tmp_path, victim)
    assert inspect_run(tmp_path, victim).state == "damaged"
    paths = write_report(tmp_path, study)
    runs = pd.read_csv(paths["runs"]).set_index("run_id")
    assert runs.loc[victim, "status"] == "damaged"
    assert "summary.json" in runs.loc[victim, "reason"]
    assert (runs.drop(index=victim)["status"] == "done").all()
    tech = pd.read_csv(paths["techniques"])
    assert tech["n_pairs"].tolist() == [2]  # the damaged run's pair is left out
    assert "damaged" in paths["report"].read_text()


@pytest.mark.slow
def test_resume_moves_it_aside_and_runs_it_again(tmp_path, one_thread):
    study = load_study(small_raw(seeds=[0]))
    first = run_study(study, tmp_path, executor="serial", progress=False)
    assert len(first.done) == 2
    victim = study.runs[0].run_id
    _damage(tmp_path, victim)
    truncated = (run_path(tmp_path, victim) / "summary.json").read_text()
    result = run_study(study, tmp_path, executor="serial", progress=False)
    assert result.ran == [victim] and victim in result.moved_damaged
    moved = result.moved_damaged[victim]
    assert moved.parent == runs_dir(tmp_path) and DAMAGED_TAG in moved.name
    assert (moved / "summary.json").read_text() == truncated  # kept as it was
    assert inspect_run(tmp_path, victim).state == "done"
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert (runs["status"] == "done").all()
