"""Issue 20: ``trajreg run config.yaml --out ''`` silently wrote to
``./runs/<config>-<time>`` as if --out had not been given. An empty --out is a usage
error: one line, exit 2, nothing written."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli


@pytest.mark.parametrize("out", ["", "   "])
def test_empty_out_is_a_usage_error(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny()))
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "c.yaml", "--out", out])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"trajreg run: error: argument --out: must be a directory path, got "
                   f"{out!r} (leave --out out for runs/<config>-<time>)\n")
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


@pytest.mark.parametrize("out", ["", "   "])
def test_empty_study_out_is_a_usage_error(tmp_path, monkeypatch, capsys, out):
    # it ran the whole paper study into ./studies/paper-quick
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["study", "paper", "--out", out])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"trajreg study: error: argument --out: must be a directory path, got {out!r} "
        "(leave --out out for studies/<study file name>)\n")
    assert list(tmp_path.iterdir()) == []
