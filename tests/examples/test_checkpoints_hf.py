"""examples/checkpoints_hf.py end to end: an ordinary Trainer run with ``save_steps``,
then its checkpoint folder measured in one call; the run directory is complete and the
same measurement as the command line's (``trajreg checkpoints DIR --text FILE``)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

pytest.importorskip("transformers", reason="the huggingface extra is not installed")

from tests.examples.common import load_example  # noqa: E402
from trajreg.cli import main  # noqa: E402
from trajreg.run.rundir import verify_manifest  # noqa: E402
from trajreg.run.summary import read_summary  # noqa: E402


def test_a_trainer_run_measured_from_its_checkpoints(tmp_path, one_thread):
    out = tmp_path / "run"
    summary = load_example("checkpoints_hf").main(
        ["--out", str(out), "--steps", "40", "--save-steps", "10", "--no-figures"])
    assert verify_manifest(out)  # complete: every file against checksums.json
    assert read_summary(out).gamma_hat == summary.gamma_hat
    facts = summary.checkpoints
    assert facts["steps"] == [10, 20, 30, 40] and facts["step_from"] == ["trainer_state.json"]
    assert all(math.isfinite(g) for g in summary.gamma_hat.values()), summary.gamma_hat
    table = pd.read_parquet(out / "metrics.parquet")
    assert table["F"].iloc[-1] < table["F"].iloc[0] - 0.2, table["F"]  # it learned
    # the command the example's docstring gives measures the same
    again = tmp_path / "again"
    assert main(["checkpoints", f"{out}-trainer", "--text", f"{out}-corpus.txt", "--out",
                 str(again), "--no-figures", "-q"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(again / "metrics.parquet"), table)
