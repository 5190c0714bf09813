"""A checkpoint holding the model's parameters under two prefixes of the same length
(a distillation module's ``student.`` and ``teacher.``): the prefix was the first of a
set sorted by length only, so which one was measured depended on the process's string
hashing, run to run. Now a tie is one line (exit 2, nothing written) naming both, and
of different lengths the shortest wins (``model.`` before ``ema_model.``), always."""

from __future__ import annotations

import pytest
import torch

from trajreg.checkpoints import measure_checkpoints
from trajreg.errors import UserError


def _series(tmp_path, prefixes):
    for step in (1, 2):
        torch.manual_seed(step)
        state = {}
        for i, prefix in enumerate(prefixes):
            state[f"{prefix}weight"] = torch.randn(1, 3) + 10 * i
            state[f"{prefix}bias"] = torch.randn(1) + 10 * i
        torch.save({"state_dict": state, "global_step": step}, tmp_path / f"s{step}.ckpt")


def _target():
    x = torch.linspace(-1, 1, 12).view(4, 3)
    return torch.nn.Linear(3, 1), (lambda m, b: (m(b) ** 2).mean()), [x]


def test_equal_length_prefixes_are_refused(tmp_path):
    _series(tmp_path, ["student.", "teacher."])
    model, loss_fn, batches = _target()
    with pytest.raises(UserError, match=r"'student\.' and 'teacher\.': ambiguous"):
        measure_checkpoints(tmp_path, tmp_path / "run", model=model, loss_fn=loss_fn,
                            batches=batches, figures=False, progress=False)
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("*partial*"))


def test_the_shortest_prefix_is_measured(tmp_path):
    _series(tmp_path, ["ema_model.", "model."])  # ema_model's weights near 0, model's 10
    model, loss_fn, batches = _target()
    _, summary = measure_checkpoints(tmp_path, tmp_path / "run", model=model,
                                     loss_fn=loss_fn, batches=batches, figures=False,
                                     progress=False)
    state = torch.load(tmp_path / "s2.ckpt", weights_only=True)["state_dict"]
    model.load_state_dict({"weight": state["model.weight"], "bias": state["model.bias"]})
    with torch.no_grad():
        assert summary.final_loss == pytest.approx(float(loss_fn(model, batches[0])),
                                                   rel=1e-6)
