"""runs.csv said skip=True for MLPs, which have no skip connections; skip is shown
only for the nets that have them (resnet, unet) and is empty otherwise."""

from __future__ import annotations

import copy

import pandas as pd

from tests.study.fakes import BASE, fake_study
from trajreg.study.report import write_report
from trajreg.study.spec import load_study


def test_skip_only_where_the_net_has_it(tmp_path):
    resnet = {"name": "resnet", "variant": "resnet20", "width": 0.25, "norm": "batch"}
    study = load_study({"base": copy.deepcopy(BASE), "seeds": [0], "blocks": [
        {"name": "mlp", "grid": {"model.norm": ["none", "batch"]}},
        {"name": "res", "base": {"data": {"name": "digits", "resize": 16}, "model": resnet},
         "grid": {"model.skip": [True, False]}}]})
    fake_study(tmp_path, study)
    runs = pd.read_csv(write_report(tmp_path, study)["runs"], keep_default_na=False)
    mlp = runs[runs["architecture"] == "mlp"]
    res = runs[runs["architecture"] == "resnet20"]
    assert (mlp["skip"] == "").all()
    assert sorted(res["skip"]) == ["False", "True"]
