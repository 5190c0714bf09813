"""A binary file given as a config (e.g. a checkpoint) raised a UnicodeDecodeError
traceback. It is one ConfigError line."""

from __future__ import annotations

import pytest

from trajreg.errors import ConfigError
from trajreg.train.config import load_config


@pytest.mark.parametrize("payload", [bytes(range(256)), b"\x80\x02}q\x00.", b"seed: 0\x00\x01"])
def test_binary_file_is_one_line_config_error(tmp_path, payload):
    path = tmp_path / "final_state.pt"
    path.write_bytes(payload)
    with pytest.raises(ConfigError, match=r"not a text file") as err:
        load_config(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))
