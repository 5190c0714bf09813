"""Every model x technique trains through the reference loop on a matching real data set,
with the recorder attached and the exact identity holding on the recorded steps."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.conftest import tiny
from trajreg.principle import identity_residual, trajectory_quantities
from trajreg.record import Recorder, TrajectoryStore
from trajreg.train.config import ACTIVATIONS, NORMS, load_config
from trajreg.train.data import load_data
from trajreg.train.loop import build, train

# model -> data it trains on here (small subsets; images resized so poolings fit)
DATA = {
    "mlp": {"name": "mnist1d", "subset": 64, "batch_size": 16},
    "cnn": {"name": "digits", "subset": 64, "batch_size": 16},
    "alexnet": {"name": "mnist5k", "subset": 32, "batch_size": 8, "resize": 32},
    "vgg": {"name": "mnist5k", "subset": 32, "batch_size": 8, "resize": 32},
    "resnet": {"name": "digits", "subset": 32, "batch_size": 8, "resize": 16},
    "unet": {"name": "shapes", "subset": 32, "batch_size": 8, "resize": 16},
}
TRANSFORMER_DATA = {"vit": {"name": "digits", "subset": 32, "batch_size": 8}}  # 8x8: 4 patches
WIDTH = {"mlp": 16, "cnn": 4, "alexnet": 0.125, "vgg": 0.125, "resnet": 0.25, "unet": 0.25,
         "vit": 16}


@functools.cache
def _data(model: str):
    return load_data(load_config(tiny(data={**DATA, **TRANSFORMER_DATA}[model])).data)


def _cases():
    for model in DATA:
        for activation in ACTIVATIONS:
            yield model, {"activation": activation}
        for norm in NORMS:
            yield model, {"norm": norm}
    for skip in (True, False):
        yield "resnet", {"skip": skip, "variant": "resnet18"}
        yield "resnet", {"skip": skip}
        yield "unet", {"skip": skip}
    yield "alexnet", {"dropout": 0.5}
    yield "mlp", {"dropout": 0.5}
    yield "vgg", {"variant": "vgg16"}
    for switch in ({"norm": "layer", "qk_norm": True}, {"norm": "rms", "skip": False},
                   {"norm": "layer", "norm_position": "post", "dropout": 0.2}):
        yield "vit", switch  # gpt needs a language data set: tests/train/test_transformer.py


@pytest.mark.parametrize("model, switch", list(_cases()),
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_trains_two_recorded_steps(model, switch, tmp_path, one_thread):
    spec = {**DATA, **TRANSFORMER_DATA}[model]
    extra = {"depth": 2, "heads": 2} if model in TRANSFORMER_DATA else {}
    cfg = load_config(tiny(data=spec, model={"name": model, "width": WIDTH[model], **extra,
                                             **switch},
                           optim={"name": "momentum", "lr": 0.01}))
    data = _data(model)
    net, opt, sched = build(cfg, data)
    with Recorder(opt, tmp_path / "t"):
        log = train(cfg, data, net, opt, sched, max_steps=2, eval_full=False)
    assert log.steps == 2 and all(np.isfinite(log.loss))
    store = TrajectoryStore(tmp_path / "t")
    xs = np.stack([store.row(t) for t in range(store.rows)])
    assert not np.array_equal(xs[0], xs[-1])
    q = trajectory_quantities(xs, store.lrs, xs[-1])
    assert np.max(np.abs(identity_residual(q.D, q.a, q.s, store.lrs))) <= 1e-10 * q.D.max()
