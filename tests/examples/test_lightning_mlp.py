"""examples/lightning_mlp.py, the README's Lightning one-liner: a real Lightning fit
measured by the callback, every step's loss rebuilt exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("lightning")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_mlp.py"


def test_the_lightning_example_measures_its_run(tmp_path, one_thread):
    spec = importlib.util.spec_from_file_location("lightning_mlp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--out", str(tmp_path / "run"), "--epochs", "2"])
    assert summary.source == "lightning"
    assert summary.loss_check["equal"] == summary.loss_check["steps"] == summary.n_steps
    assert (tmp_path / "run" / "summary.json").is_file()
