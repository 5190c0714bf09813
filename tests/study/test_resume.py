"""Resuming a study directory without training: what a killed attempt left is cleaned
up, finished runs are kept, and the directory check lets the same study back in."""

from __future__ import annotations

from tests.study.fakes import fake_study, small_raw
from trajreg.study.execute import run_study
from trajreg.study.layout import check_out_dir, runs_dir
from trajreg.study.spec import load_study


def test_stale_partials_and_progress_files_are_removed(tmp_path):
    study = load_study(small_raw(seeds=[0, 1]))
    fake_study(tmp_path, study)
    stale = runs_dir(tmp_path) / f".{study.runs[0].run_id}.partial-abc123"
    (stale / "trajectory").mkdir(parents=True)
    (runs_dir(tmp_path) / ".summary.json.tmp-999").write_text("{")
    (tmp_path / "progress").mkdir()
    (tmp_path / "progress" / study.runs[1].run_id).write_text("1 3")
    result = run_study(study, tmp_path, executor="serial", progress=False)
    assert result.ran == [] and len(result.done) == len(study.runs)
    assert result.partials_removed == 2
    assert not stale.exists() and not (tmp_path / "progress").exists()
    assert sorted(p.name for p in runs_dir(tmp_path).iterdir()) == sorted(
        r.run_id for r in study.runs)


def test_the_same_study_file_may_resume(tmp_path):
    raw = small_raw()
    check_out_dir(tmp_path, raw)  # empty
    fake_study(tmp_path, load_study(raw))
    check_out_dir(tmp_path, raw)  # the same study: resumes
    check_out_dir(tmp_path / "new", raw)  # does not exist yet
