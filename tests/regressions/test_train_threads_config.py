"""Issue 11: a run's thread count came from wherever it ran (a study's --jobs), so its
numbers did too. ``train.threads`` sets it in the config, applied by ``build``."""

from __future__ import annotations

import torch

from trajreg.train.config import load_config
from trajreg.train.data import load_data
from trajreg.train.loop import build


def test_build_applies_train_threads():
    cfg = load_config({"data": {"name": "digits", "subset": 64}, "model": {"name": "mlp",
                       "depth": 2}, "optim": {"name": "sgd"}, "train": {"threads": 1}})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build(cfg, load_data(cfg.data))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
