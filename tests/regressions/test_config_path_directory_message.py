"""Issue 20: a config path that is a directory (or /dev/null, a named pipe) was reported
as "config file not found". The message says what the path is."""

from __future__ import annotations

import os

import pytest

from trajreg import cli
from trajreg.errors import ConfigError
from trajreg.train.config import load_config, read_yaml


def test_a_directory_is_named_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: is a directory, not a config file$"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r": is a directory, not a study file$"):
        read_yaml(tmp_path, what="study")


def test_a_device_or_pipe_is_not_a_regular_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^/dev/null: is not a regular file \(a character "
                                          r"device\); a config is a YAML file$"):
        load_config("/dev/null")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r": is not a regular file \(a named pipe\)"):
        load_config(fifo)  # refused without opening it (no hang)


def test_empty_and_missing_files_keep_their_messages(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml: config is empty$"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match=r"^config file not found: .*nope\.yaml$"):
        load_config(tmp_path / "nope.yaml")


def test_the_command_says_it_in_one_line(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (f"trajreg: error: {tmp_path}: is a directory, not a "
                                       "config file\n")
    assert list(tmp_path.iterdir()) == []
