"""A LightningModule whose ``save_hyperparameters()`` keeps what ``__init__`` got (an
``nn.Module``, an optimizer's ``functools.partial``: lightning-hydra-template's
pattern) writes those objects into every .ckpt. ``torch.load(weights_only=True)``
refuses their classes, and trajreg refused the series as "not a readable checkpoint
(truncated or damaged?)". Now those objects are read as inert placeholders (their
classes never imported, none of their code run) and the state dict is measured."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lightning.pytorch")

from tests.checkpoints import _frameworks as fw  # noqa: E402
from trajreg.checkpoints import find_checkpoints, measure_checkpoints  # noqa: E402
from trajreg.errors import UserError  # noqa: E402


def test_ckpt_with_objects_in_hyper_parameters_is_measured(tmp_path, one_thread):
    ckpts = tmp_path / "ckpts"
    cls = fw.train_lightning(ckpts, hparams_module=True)
    with pytest.raises(Exception, match="Unsupported global"):  # what torch alone says
        torch.load(ckpts / "epoch=0-step=4.ckpt", weights_only=True)
    assert [ck.step for ck in find_checkpoints([ckpts])] == [4, 8, 12, 16]
    model, loss_fn, batches = fw.lightning_target()
    out, _ = measure_checkpoints(ckpts, tmp_path / "run", model=model, loss_fn=loss_fn,
                                 batches=batches, figures=False, progress=False)
    import pandas as pd

    table = pd.read_parquet(out / "metrics.parquet")
    files = [ckpts / f"epoch=0-step={n}.ckpt" for n in (4, 8, 12, 16)]
    xs, grads, losses = fw.lightning_brute_force(cls, files)
    errors = fw.relative_errors(table, xs, grads, losses, k_star=3)
    assert max(errors.values()) < 1e-5, errors


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_none(tmp_path):
    import os

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"x": Payload()},
                "global_step": 3}, tmp_path / "a.ckpt")
    with pytest.raises(UserError, match=r"a\.ckpt: holds .*system, which cannot be read without "
                                        "running code"):
        find_checkpoints([tmp_path / "a.ckpt"])
    assert not marker.exists()
