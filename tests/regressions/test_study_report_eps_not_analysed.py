"""A study whose report eps some run does not analyse stopped with a KeyError after
every run had trained; it must be one line, exit status 2, before anything runs."""

from __future__ import annotations

import pytest
import yaml

from tests.study.fakes import small_raw
from trajreg.errors import ConfigError
from trajreg.study.cli import main
from trajreg.study.spec import load_study


def test_report_eps_outside_analysis_eps_is_a_config_error():
    with pytest.raises(ConfigError, match=r"report.eps: 0.1 is not among the analysis.eps"):
        load_study(small_raw(report={"eps": 0.1}))


def test_the_command_stops_before_training(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(small_raw(report={"eps": 0.1})))
    out = tmp_path / "s"
    assert main(["study", str(path), "--out", str(out), "--executor", "serial"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trajreg: error: report.eps: 0.1")
    assert not out.exists()


@pytest.mark.parametrize("report, message", [
    ({"alpha": 0}, "report.alpha: must be (0, 1)"),
    ({"min_effect": -1}, "report.min_effect: must be >= 0"),
    ({"train_margin": "a"}, "report.train_margin: must be a number"),
    ({"colour": 1}, "report.colour: unknown report key"),
])
def test_every_report_key_is_validated(report, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_study(small_raw(report=report))


def test_record_mode_off_cannot_be_reported():
    raw = small_raw()
    raw["base"]["record"] = {"mode": "off"}
    with pytest.raises(ConfigError, match="record.mode: a study's report needs"):
        load_study(raw)
