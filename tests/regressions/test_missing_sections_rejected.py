"""A run config without data, model or optim silently used their defaults (digits, a
6-layer MLP, sgd). They are required now; train, record and analysis stay optional."""

from __future__ import annotations

import pytest

from trajreg.errors import ConfigError
from trajreg.train.config import load_config


def test_config_without_training_sections(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\ntrain: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"^data: missing section "
                                          r"\(required: data, model, optim\)$"):
        load_config(path)


@pytest.mark.parametrize("missing", ["data", "model", "optim"])
def test_each_section_is_required(missing):
    raw = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "optim": {"name": "sgd"}}
    del raw[missing]
    with pytest.raises(ConfigError, match=rf"^{missing}: missing section"):
        load_config(raw)
