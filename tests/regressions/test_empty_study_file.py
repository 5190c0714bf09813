"""An empty study file must be one clear error (exit status 2), not an empty study."""

from __future__ import annotations

import pytest

from trajreg.errors import ConfigError
from trajreg.study.cli import main
from trajreg.study.spec import load_study


def test_empty_mapping():
    with pytest.raises(ConfigError, match="empty"):
        load_study({})


@pytest.mark.parametrize("text", ["", "\n# nothing but a comment\n"])
def test_empty_file_on_the_command_line(tmp_path, capsys, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert main(["study", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty" in err
    assert not (tmp_path / "s").exists()
