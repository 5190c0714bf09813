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
    seen = _lrs(cfg, T, S)
    assert seen == pytest.approx([0.1 * f(t) for t in range(T)], rel=1e-12)


def _lrs(cfg, T: int, S: int) -> list[float]:
    """The learning rate of each of T steps, read off an optimizer and its scheduler."""
    opt = build_optimizer(cfg.optim, torch.nn.Linear(2, 2).parameters())
    sched = build_scheduler(cfg.optim, opt, T, S)
    seen = []
    for _ in range(T):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


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


# ------------------------------------------------------------- warmup and decay groups


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "warmup_cosine"])
def test_warmup_steps_multiply_any_schedule(schedule):
    """eta_t = lr * schedule(t) * min(1, (t + 1) / W), read off the optimizer step by
    step, against the formula written out."""
    W, T, S = 7, 30, 5
    cfg = load_config(tiny(optim={"schedule": schedule, "step_epochs": 2, "decay": 0.5,
                                  "lr": 0.1, "warmup_steps": W}))
    seen = _lrs(cfg, T, S)
    expected = [0.1 * _brute(schedule, t, T, S) * ((t + 1) / W if t < W else 1.0)
                for t in range(T)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == pytest.approx(0.1 * _brute(schedule, 0, T, S) / W)
    off = load_config(tiny(optim={"schedule": schedule, "step_epochs": 2, "decay": 0.5}))
    assert off.optim.warmup_steps == 0
    assert [lr_factor(off.optim, T, S)(t) for t in range(T)] == [
        _brute(schedule, t, T, S) for t in range(T)]


class _Net(torch.nn.Module):
    """Every kind of parameter decay_exclude sorts: linear weights and biases, an
    embedding, batch/layer/group/RMS norms, and a 1-D parameter that is not a bias."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 4)
        self.fc = torch.nn.Linear(4, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.ln = torch.nn.LayerNorm(4)
        self.gn = torch.nn.GroupNorm(2, 4)
        self.rms = torch.nn.RMSNorm(4)
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.out = torch.nn.Linear(4, 3, bias=False)


def test_decay_exclude_groups_norms_and_biases():
    from trajreg.train.optim import parameter_groups, trained_parameters

    net = _Net()
    names = {id(p): n for n, p in net.named_parameters()}
    cfg = load_config(tiny(optim={"name": "adamw", "lr": 1e-3, "weight_decay": 0.1,
                                  "decay_exclude": ["norm", "bias"]})).optim
    opt = build_optimizer(cfg, parameter_groups(cfg, net))
    groups = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    assert groups == [["scale", "emb.weight", "fc.weight", "out.weight"],  # module order
                      ["fc.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias", "gn.weight",
                       "gn.bias", "rms.weight"]]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [names[id(p)] for p in trained_parameters(cfg, net)] == groups[0] + groups[1]
    only_bias = load_config(tiny(optim={"weight_decay": 0.1, "decay_exclude": ["bias"]})).optim
    assert [[names[id(p)] for p in g["params"]] for g in parameter_groups(only_bias, net)][1] \
        == ["fc.bias", "bn.bias", "ln.bias", "gn.bias"]
    default = load_config(tiny(optim={"weight_decay": 0.1})).optim  # all decayed, one group
    opt = build_optimizer(default, parameter_groups(default, net))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    assert trained_parameters(default, net) == list(net.parameters())


def test_decay_exclude_without_exempt_parameters_keeps_one_group():
    from trajreg.train.optim import parameter_groups

    cfg = load_config(tiny(optim={"weight_decay": 0.1, "decay_exclude": ["norm"]})).optim
    net = torch.nn.Linear(3, 2)
    assert [len(g["params"]) for g in parameter_groups(cfg, net)] == [2]


@pytest.mark.parametrize("optim, key", [
    ({"warmup_steps": -1}, "optim.warmup_steps"),
    ({"warmup_steps": 1.5}, "optim.warmup_steps"),
    ({"warmup_steps": 10, "schedule": "warmup_cosine"}, "optim.warmup_steps"),
    ({"decay_exclude": ["norms"]}, r"optim.decay_exclude\[0\]"),
    ({"decay_exclude": "bias"}, "optim.decay_exclude"),
    ({"decay_exclude": ["bias", "bias"]}, "optim.decay_exclude"),
])
def test_bad_warmup_and_decay_settings(optim, key):
    with pytest.raises(ConfigError, match=f"^{key}:") as err:
        load_config(tiny(optim=optim))
    assert "\n" not in str(err.value)
