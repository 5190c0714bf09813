"""Issue 10: an unset model.width was 64 for every model, and the conv nets read it as a
channel multiplier, so ``model: {name: resnet, variant: resnet20}`` built 1.09 billion
parameters. Unset now means the family's default: multiplier 1.0 (the standard size)."""

from __future__ import annotations

import torch

from trajreg.train.config import load_config
from trajreg.train.models import build_model, n_params

SECTIONS = {"data": {"name": "digits"}, "optim": {"name": "sgd"}}


def _count(model: dict, shape: tuple[int, ...] = (3, 32, 32), k: int = 10) -> int:
    cfg = load_config({**SECTIONS, "model": model})
    with torch.device("meta"):  # no storage: the old default would not fit in memory
        return n_params(build_model(cfg.model, shape, k))


def test_resnet20_has_its_published_size():
    assert 0.26e6 < _count({"name": "resnet", "variant": "resnet20"}) < 0.28e6


def test_every_conv_net_defaults_to_its_standard_size():
    assert 14.6e6 < _count({"name": "vgg", "variant": "vgg16"}) < 14.8e6
    assert _count({"name": "alexnet"}) < 8e6
    assert _count({"name": "unet"}, (1, 32, 32), 4) < 0.5e6
    assert _count({"name": "cnn"}) < 30_000  # 16 and 32 channels
    assert load_config({**SECTIONS, "model": {"name": "resnet"}}).model.width == 1.0
