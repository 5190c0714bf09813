"""The report's "Data and networks" section printed Python dict reprs
({'name': 'mlp', ...}); it must read as key: value text."""

from __future__ import annotations

from tests.study.fakes import fake_study, small_raw
from trajreg.study.report import write_report
from trajreg.study.spec import load_study


def test_no_python_reprs(tmp_path):
    raw = small_raw(seeds=[0])
    raw["grid"]["optim"] = [{"name": "sgd", "lr": 0.05}, {"name": "adam", "lr": 0.001}]
    study = load_study(raw)
    fake_study(tmp_path, study)
    page = write_report(tmp_path, study)["report"].read_text()
    section = page.split("Data and networks", 1)[1].split("<h2>", 1)[0]
    assert "{" not in section and "[" not in section
    assert "&#39;" not in section and "'" not in section
    assert "name: mlp" in section and "batch_size: 64" in section
    assert "optim: (name: sgd, lr: 0.05) / (name: adam, lr: 0.001)" in section
