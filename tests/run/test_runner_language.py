"""Runs of the language task through ``runner.run``: store and replay (replay proves
itself bit for bit against the recorded run), the data facts in the run directory, and
a new analysis of the run. The model is the test's own bigram table."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tests.train.test_language import _pydoc, _run_cfg, bigram  # noqa: F401 - a fixture
from trajreg.distributed.train import full_loss_of_parts
from trajreg.run import rundir
from trajreg.run.runner import analyze, run
from trajreg.train.data import load_data
from trajreg.train.loop import build, full_loss


@pytest.mark.parametrize("mode", ["store", "replay"])
def test_a_text_run_records_and_measures(tmp_path, bigram, one_thread, mode):  # noqa: F811
    cfg = _run_cfg({"name": "text", "batch_size": 16, "subset": 64}, train={"epochs": 2},
                   record={"mode": mode})
    out, summary = run(cfg, tmp_path / "r", figures=False, progress=False)
    assert summary.n_steps == 8 and summary.task == "language"
    assert summary.full_loss[-1] < summary.full_loss[0]
    assert set(summary.evaluation) == {"train_loss", "train_bpc", "train_accuracy",
                                       "test_loss", "test_bpc", "test_accuracy"}
    assert summary.gamma_bar is not None
    facts = json.loads((out / rundir.DATA_FACTS).read_text(encoding="utf-8"))
    assert facts == rundir.read_data_facts(out)
    text = _pydoc()
    train_text = text[: len(text) - round(0.2 * len(text))]
    assert facts["vocab"] == "".join(sorted(set(train_text)))
    assert facts["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert (facts["name"], facts["task"], facts["n_classes"]) == ("text", "language",
                                                                   len(facts["vocab"]) + 1)
    assert facts["block_size"] == 64 and facts["train_windows"] == 64
    rundir.verify_run_dir(out)  # data.json is covered by checksums.json
    assert "data.json" in json.loads((out / rundir.MANIFEST).read_text())["files"]
    again = analyze(out, reference="best", progress=False)  # re-measured from the seed
    assert again.n_steps == 8
    rundir.verify_run_dir(out)


def test_a_modular_run_replays(tmp_path, bigram, one_thread):  # noqa: F811
    cfg = _run_cfg({"name": "modular", "p": 7, "batch_size": 8}, train={"epochs": 2},
                   record={"mode": "replay"})
    out, summary = run(cfg, tmp_path / "r", figures=False, progress=False)
    assert summary.n_steps == 2 * (round(0.5 * 49) // 8)
    assert rundir.read_data_facts(out)["p"] == 7


def test_the_distributed_full_loss_of_windows(bigram):  # noqa: F811
    """A distributed run's F_k sums the ranks' parts of the same evaluation windows."""
    cfg = _run_cfg({"name": "text", "batch_size": 16, "subset": 100})
    d = load_data(cfg.data)
    model, _, _ = build(cfg, d)
    assert full_loss_of_parts(cfg, model, d, world=2, chunk=7) == pytest.approx(
        full_loss(cfg, model, d), rel=1e-6)
    with torch.no_grad():
        x, y = d.eval_train
        expected = torch.nn.functional.cross_entropy(
            model(x).reshape(-1, d.n_classes).double(), y.reshape(-1)).item()
    assert full_loss(cfg, model, d) == pytest.approx(expected, rel=1e-6)
