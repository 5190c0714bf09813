"""``study --out DIR`` wrote into any directory; it must refuse (exit status 2, one
line) one that is neither new, empty nor a directory of the same study file, unless
--force."""

from __future__ import annotations

import pytest
import yaml

from tests.study.fakes import small_raw
from trajreg.errors import UserError
from trajreg.study.cli import main
from trajreg.study.execute import run_study
from trajreg.study.layout import write_study_file


def _write(tmp_path, raw):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_directory_holding_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    path = _write(tmp_path, small_raw(seeds=[0]))
    assert main(["study", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty and not a study directory" in err
    assert "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_a_directory_of_another_study_is_refused(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    write_study_file(out, small_raw(seeds=[0, 1, 2]))
    with pytest.raises(UserError, match="holds a different study"):
        run_study(small_raw(seeds=[0]), out, executor="serial", progress=False)


@pytest.mark.slow
def test_force_writes_there_and_keeps_what_was_there(tmp_path, one_thread):
    out = tmp_path / "s"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = run_study(small_raw(seeds=[0]), out, executor="serial", progress=False,
                       force=True)
    assert len(result.done) == 2 and (out / "thesis.tex").read_text() == "precious"
    # the same study file again resumes without --force
    again = run_study(small_raw(seeds=[0]), out, executor="serial", progress=False)
    assert again.ran == []
