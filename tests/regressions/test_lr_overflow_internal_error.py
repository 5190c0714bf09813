"""Issue 20: ``optim.lr: 1e39`` or ``optim.weight_decay: 1e308`` (above float32's largest
value) passed validation and failed inside torch's SGD ("value cannot be converted to
type float without overflow": an internal error), and ``optim.lr: 1e-320`` (0 in
float32) trained nothing and reported gamma_hat = -inf with numpy warnings. Values that
cannot work in the run's dtype, float32, are refused at validation, naming the key."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import tiny
from trajreg import cli
from trajreg.errors import ConfigError
from trajreg.train.config import load_config


@pytest.mark.parametrize("optim, message", [
    ({"lr": 1e39}, r"^optim\.lr: 1e\+39 overflows float32, the run's dtype"),
    ({"weight_decay": 1e308}, r"^optim\.weight_decay: 1e\+308 overflows float32"),
    ({"lr": 1e-320}, r"^optim\.lr: 1e-320 is 0 in float32, the run's dtype"),
    ({"weight_decay": 1e-60}, r"^optim\.weight_decay: 1e-60 is 0 in float32"),
    ({"name": "momentum", "momentum": 0.999999999999},
     r"^optim\.momentum: 0\.999999999999 is 1 in float32"),
    ({"name": "adam", "lr": 1e-3, "betas": [0.9, 0.99999999999]},
     r"^optim\.betas\[1\]: 0\.99999999999 is 1 in float32"),
    ({"schedule": "step", "decay": 1e-60}, r"^optim\.decay: 1e-60 is 0 in float32"),
])
def test_values_that_cannot_work_in_float32_are_refused(optim, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tiny(optim=optim))


def test_values_float32_holds_are_accepted():
    load_config(tiny(optim={"lr": 3e38, "weight_decay": 1e-44}))
    load_config(tiny(optim={"name": "momentum", "momentum": 0.9999999}))


def test_the_command_says_one_line_exit_2_writes_nothing(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(optim={"lr": 1e39})))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trajreg: error: optim.lr: 1e+39 overflows float32")
    assert len(err.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]
