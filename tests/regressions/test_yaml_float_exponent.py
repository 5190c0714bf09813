"""``lr: 1e-3`` was read by PyYAML (YAML 1.1) as the string "1e-3" and refused as not a
number. Configs are read as YAML 1.2, where 1e-3, 1E5, .5 and -2e-4 are floats."""

from __future__ import annotations

from trajreg.train.config import load_config, read_yaml


def test_exponent_learning_rate(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {name: digits}\nmodel: {name: mlp}\n"
                    "optim: {name: adam, lr: 1e-3, weight_decay: 5E-4}\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 5e-4


def test_float_forms(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: 1e-3\nb: 1E5\nc: .5\nd: -2e-4\ne: 3\n")
    raw = read_yaml(path)
    assert raw == {"a": 1e-3, "b": 1e5, "c": 0.5, "d": -2e-4, "e": 3}
    assert all(type(raw[k]) is float for k in "abcd") and type(raw["e"]) is int
