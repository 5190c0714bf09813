from pathlib import Path

import pytest

from tests.conftest import tiny
from trajreg.errors import ConfigError
from trajreg.train.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_demo_config_loads_and_resolves_momentum():
    cfg = load_config(ROOT / "configs" / "digits_mlp.yaml")
    assert cfg.model.norm == "batch" and cfg.optim.lr == 0.05
    assert load_config(tiny(optim={"name": "momentum"})).optim.momentum == 0.9
    assert load_config(tiny()).optim.momentum == 0.0


@pytest.mark.parametrize("change, key", [
    ({"optim": {"lr": -0.1}}, "optim.lr"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"data": {"batch_size": 2.5}}, "data.batch_size"),
    ({"data": {"name": "imagenet"}}, "data.name"),
    ({"model": {"name": "transformer"}}, "model.name"),
    ({"model": {"activation": "swish"}}, "model.activation"),
    ({"model": {"widht": 3}}, "model.widht"),
    ({"record": {"mode": "tape"}}, "record.mode"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"optimizer": {"name": "sgd"}}, "optimizer"),
    ({"seed": -1}, "seed"),
    ({"model": 3}, "model"),
])
def test_bad_values_name_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        load_config(tiny(**change))
    assert str(err.value).startswith(f"{key}:")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
