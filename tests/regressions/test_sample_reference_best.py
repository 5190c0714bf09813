"""Issue 20: ``trajreg analyze --reference best`` on a sample run was accepted when the
best epoch end happened to be a sampled step and refused otherwise: the outcome hung on
the draw. Sample (and sketch) runs measure against the final iterate only, as
``analysis.reference: best`` is refused before training and docs/record-modes.md says:
another reference is refused whether or not its iterate was kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import tiny
from trajreg.errors import UserError
from trajreg.record.modes.sample import SampleMode, SampleStore
from trajreg.run.runner import run
from trajreg.train.config import load_config


def test_a_kept_epoch_end_is_refused_as_a_reference(tmp_path, one_thread):
    # every step kept (24 steps <= sample_min_steps): every epoch end is stored
    cfg = load_config(tiny(record={"mode": "sample"}))
    out, summary = run(cfg, tmp_path / "r", figures=False, progress=False)
    store = SampleStore(out / "trajectory")
    T = summary.n_steps
    epoch_end = summary.epoch_ends[0]
    assert epoch_end < T and store.has(epoch_end)
    trained = SimpleNamespace(log=SimpleNamespace(diverged_step=None))
    with pytest.raises(UserError, match="measures against the final iterate only"):
        SampleMode().reference(store, epoch_end, trained)
    assert SampleMode().reference(store, T, trained) == T
    diverged = SimpleNamespace(log=SimpleNamespace(diverged_step=T))
    assert SampleMode().reference(store, epoch_end, diverged) == epoch_end
