"""record.keep_trajectory: false deletes trajectory/ once a run is measured."""

from __future__ import annotations

import pytest

from tests.conftest import tiny
from trajreg.errors import ConfigError, UserError
from trajreg.run import rundir
from trajreg.run.runner import analyze, run
from trajreg.train.config import load_config


def test_the_option_is_a_boolean():
    assert load_config(tiny()).record.keep_trajectory is True
    with pytest.raises(ConfigError, match="keep_trajectory"):
        load_config(tiny(record={"mode": "store", "keep_trajectory": "no"}))


@pytest.mark.parametrize("mode", ["store", "sample"])
def test_a_run_without_its_trajectory_is_finished_and_reanalysable(tmp_path, one_thread, mode):
    # lr 2 for 4 epochs: the best epoch end (3) is not the last, another reference point
    common = {"optim": {"name": "sgd", "lr": 2.0}, "train": {"epochs": 4}}
    cfg = load_config(tiny(record={"mode": mode, "keep_trajectory": False,
                                   "gradients": True, "sample_rate": 0.5}, **common))
    kept_cfg = load_config(tiny(record={"mode": mode, "gradients": True, "sample_rate": 0.5},
                                **common))
    out, summary = run(cfg, tmp_path / "run", figures=False, progress=False)
    _, kept = run(kept_cfg, tmp_path / "kept", figures=False, progress=False)
    assert not (out / rundir.TRAJECTORY).exists() and (tmp_path / "kept" / "trajectory").is_dir()
    # the same measurement as the run that kept it, geometry included
    assert summary.gamma_hat == kept.gamma_hat and summary.mu_hat == kept.mu_hat
    assert summary.mli == kept.mli and summary.path_ratio == kept.path_ratio
    assert rundir.verify_run_dir(out) == out
    again = analyze(out, eps=[0.0, 0.1], progress=False)  # from metrics.parquet
    assert set(again.gamma_hat) == {"0.0", "0.1"} and again.mli == summary.mli
    with pytest.raises(UserError, match="did not keep its trajectory"):
        analyze(out, reference="best", progress=False)
    if mode == "store":  # the run that kept it can (sample mode keeps x_24 by chance only)
        assert analyze(tmp_path / "kept", reference="best",
                       progress=False).reference_step == 24
