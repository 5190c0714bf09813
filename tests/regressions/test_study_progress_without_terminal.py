"""A long study without a terminal printed nothing until the end; it must print one
line per finished run (a terminal keeps the bar)."""

from __future__ import annotations

import io

import pytest

from tests.study.fakes import small_raw
from trajreg.study.execute import Progress, progress_mode, run_study


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_stream():
    assert progress_mode(None, io.StringIO()) == "lines"
    assert progress_mode(None, Terminal()) == "bar"
    assert progress_mode(False, Terminal()) == "off"


def test_one_line_per_finished_run(tmp_path):
    stream = io.StringIO()
    progress = Progress(tmp_path, total=3, done=1, mode="lines", stream=stream)
    progress.advance("abc", "done")
    progress.advance("def", "failed")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("study: 2/3 runs finished (abc done")
    assert lines[1].startswith("study: 3/3 runs finished (def failed")


@pytest.mark.slow
def test_a_study_logs_each_run(tmp_path, capsys, one_thread):
    run_study(small_raw(seeds=[0]), tmp_path / "s", executor="serial")  # stderr: no tty
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("study: ")]
    assert [x.split(" (")[0] for x in lines] == ["study: 1/2 runs finished",
                                                 "study: 2/2 runs finished"]
