import math

import pytest
import torch

from tests.conftest import tiny
from trajreg.errors import ConfigError
from trajreg.train.config import OPTIMIZERS, SCHEDULES, load_config
from trajreg.train.optim import build_optimizer, build_scheduler, lr_factor

EXPECTED = {
    "sgd": (torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {"betas": (0.9, 0.999)}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
    "rmsprop": (torch.optim.RMSprop, {"momentum": 0.0}),
    "adagrad": (torch.optim.Adagrad, {}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_is_built_with_its_settings(name):
    optim = {"name": name, "lr": 0.01}
    if name == "adamw":
        optim["weight_decay"] = 0.01
    cfg = load_config(tiny(optim=optim))
    opt = build_optimizer(cfg.optim, torch.nn.Linear(2, 2).parameters())
    cls, settings = EXPECTED[name]
    assert type(opt) is cls and opt.defaults["lr"] == 0.01
    for key, value in settings.items():
        assert opt.defaults[key] == value, key


def _brute(schedule, t, T, S, step_epochs=2, decay=0.5, warmup_epochs=1):
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        k = 0
        for boundary in range(step_epochs * S, t + 1, step_epochs * S):
            k += boundary <= t
        return decay**k
    if schedule == "cosine":
        return (1 + math.cos(math.pi * t / T)) / 2
    W = warmup_epochs * S
    return (t + 1) / W if t < W else (1 + math.cos(math.pi * (t - W) / (T - W))) / 2


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_match_their_formula_and_drive_the_optimizer(schedule):
    cfg = load_config(tiny(optim={"schedule": schedule, "step_epochs": 2, "decay": 0.5,
                                  "warmup_epochs": 1, "lr": 0.1}))
    T, S = 30, 5
    f = lr_factor(cfg.optim, T, S)
    for t in range(T):
        assert f(t) == pytest.approx(_brute(schedule, t, T, S), rel=1e-12, abs=1e-15)
        assert f(t) > 0
    opt = build_optimizer(cfg.optim, torch.nn.Linear(2, 2).parameters())
    sched = build_scheduler(cfg.optim, opt, T, S)
    seen = []
    for _ in range(T):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * f(t) for t in range(T)], rel=1e-12)


@pytest.mark.parametrize("optim, key", [
    ({"name": "adam", "momentum": 0.9}, "optim.momentum"),
    ({"name": "nesterov", "momentum": 0.0}, "optim.momentum"),
    ({"schedule": "exp"}, "optim.schedule"),
    ({"decay": 0.0}, "optim.decay"),
    ({"betas": [0.9]}, "optim.betas"),
])
def test_bad_optimizer_settings(optim, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        load_config(tiny(optim=optim))
