"""``trajreg analyze --delta inf`` (or nan) was accepted and analysed with an infinite
delta; it must be a one-line usage error, exit 2, before anything is read."""

from __future__ import annotations

import pytest

from trajreg import cli


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_infinite_delta_is_a_usage_error(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["analyze", str(tmp_path / "r"), "--delta", value])
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"trajreg analyze: error: argument --delta: must be a "
                                       f"finite number >= 0, got '{value}'\n")
