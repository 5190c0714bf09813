"""A key given twice in a YAML mapping silently kept the last value (``lr: 0.1`` then
``lr: 10`` trained at 10). It is an error naming the key and the line."""

from __future__ import annotations

import pytest

from trajreg.errors import ConfigError
from trajreg.train.config import load_config


def test_duplicate_key_names_key_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {name: digits}\nmodel: {name: mlp}\noptim:\n  lr: 0.1\n"
                    "  name: sgd\n  lr: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert "duplicate key 'lr'" in message and "line 6" in message and "line 4" in message


def test_duplicate_top_level_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {name: digits}\nmodel: {name: mlp}\noptim: {}\nmodel: {depth: 3}\n")
    with pytest.raises(ConfigError, match=r"line 4: duplicate key 'model'"):
        load_config(path)
