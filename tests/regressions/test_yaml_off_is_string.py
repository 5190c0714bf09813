"""The README's ``record: {mode: off}`` was read by YAML 1.1 as the boolean false and
refused ("record.mode: must be a string"). Configs are read as YAML 1.2: off, on, yes,
no, y and n are strings."""

from __future__ import annotations

from trajreg.train.config import load_config, read_yaml

CONFIG = """\
data: {name: digits, batch_size: 64}
model: {name: mlp, depth: 3}
optim: {name: sgd, lr: 0.05}
record: {mode: off}
"""


def test_record_mode_off_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    assert load_config(path).record.mode == "off"


def test_yes_no_on_y_n_stay_strings(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: on\nb: yes\nc: no\nd: y\ne: n\nf: true\n")
    assert read_yaml(path) == {"a": "on", "b": "yes", "c": "no", "d": "y", "e": "n", "f": True}
