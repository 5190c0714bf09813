"""An empty run config (or one holding only comments) silently trained the default
model. It is now one clear error."""

from __future__ import annotations

import pytest

from trajreg.errors import ConfigError
from trajreg.train.config import load_config


@pytest.mark.parametrize("text", ["", "\n", "# nothing here\n# at all\n"])
def test_empty_file_is_an_error(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"config is empty$"):
        load_config(path)
