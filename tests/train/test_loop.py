"""The reference loop's accumulation and clipping, on a model without batch norm or
dropout, where k micro-batches of a minibatch must give the minibatch's own step."""

from __future__ import annotations

import torch

from tests.conftest import tiny
from trajreg.train.config import load_config
from trajreg.train.data import load_data
from trajreg.train.loop import build, train
from trajreg.train.optim import trained_parameters


def _steps(steps, **train_keys):
    cfg = load_config(tiny(model={"norm": "none", "width": 16},
                           train={"epochs": 1, "threads": 1, **train_keys}))
    data = load_data(cfg.data)
    model, opt, sched = build(cfg, data)
    log = train(cfg, data, model, opt, sched, max_steps=steps, eval_full=False, progress=False)
    return torch.cat([p.detach().reshape(-1) for p in trained_parameters(cfg.optim, model)]), log


def test_accumulated_micro_batches_take_the_minibatch_step(one_thread):
    whole, log1 = _steps(3)
    for k in (2, 4):
        accumulated, logk = _steps(3, accumulate=k)
        torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-7)
        # l_t: the mean of the micro-batch means, the minibatch mean up to rounding
        assert all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip(logk.loss, log1.loss,
                                                                strict=True))


def test_a_clip_above_every_norm_changes_nothing_and_one_below_changes_the_step(one_thread):
    free, _ = _steps(2)
    loose, _ = _steps(2, grad_clip=1e6)
    tight, _ = _steps(2, grad_clip=1e-3)
    assert torch.equal(loose, free)
    assert not torch.allclose(tight, free)
