"""Sizing a run before anything is allocated: machine caps, data, model, the refusal."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny
from trajreg.errors import ConfigError
from trajreg.train import data as data_mod
from trajreg.train import machine, size
from trajreg.train.config import DataConfig, ModelConfig, load_config
from trajreg.train.data import DATASETS, DataSize, load_data, planned_size
from trajreg.train.loop import build
from trajreg.train.models import MODELS, TRANSFORMERS, VARIANTS
from trajreg.train.optim import OPTIMIZERS, optimizer_state_tensors

GB = 1e9


# ----------------------------------------------------------------------------- machine

def test_machine_memory_and_cap():
    total = machine.host_memory_bytes()
    assert total is not None and total > 1e8
    assert machine.device_memory_bytes("cpu") == total
    cap = machine.memory_cap("cpu")
    assert cap.bytes == pytest.approx(0.75 * total)
    assert "75% of this machine's RAM" in cap.about
    override = machine.memory_cap("cpu", 2.5)
    assert override.bytes == 2.5e9 and override.about == "train.max_memory_gb = 2.5 GB"
    assert override.allows(2.5e9) and not override.allows(2.5e9 + 1)
    if not torch.cuda.is_available():
        assert machine.device_memory_bytes("cuda") is None
        assert machine.memory_cap("cuda").bytes == math.inf  # require_device says why


# ----------------------------------------------------------------------------- data

@pytest.mark.parametrize("name", ["digits", "mnist1d", "mnist5k", "shapes"])
def test_planned_size_is_what_load_data_makes(name):
    cfg = DataConfig(name=name, subset=100, resize=None if name == "mnist1d" else 12)
    planned = planned_size(cfg)
    d = load_data(cfg)
    assert (planned.n_train, planned.n_test) == (len(d.x_train), len(d.x_test))
    assert planned.input_shape == d.input_shape
    assert planned.target_shape == tuple(d.y_train.shape[1:])
    made = sum(t.numel() * t.element_size() for t in (d.x_train, d.y_train, d.x_test, d.y_test))
    assert planned.nbytes == made


def test_published_sizes_of_local_sets():
    cifar = planned_size(DataConfig(name="cifar10", root="/nowhere"))
    assert cifar == DataSize(50000, 10000, (3, 32, 32), ())
    assert cifar.nbytes == 60000 * (3 * 32 * 32 * 4 + 8)
    assert planned_size(DataConfig(name="mnist", resize=64)).input_shape == (1, 64, 64)
    assert all(len(spec.shape) in (2, 3) for spec in DATASETS.values()
               if spec.task != "language")  # token sets: (T,), tests/train/test_language.py


def test_load_data_refuses_before_converting(monkeypatch):
    """The check runs before the float32 copy and the resize are allocated."""
    def boom(*args, **kwargs):
        raise AssertionError("allocated before the size check")

    monkeypatch.setattr(data_mod, "_as_float", boom)
    monkeypatch.setattr(data_mod, "_resize_images", boom)
    with pytest.raises(ConfigError, match=r"^data\.resize: the data set needs about .* "
                                          r"\(1438\+359 examples of 1x4096x4096 float32\), "
                                          r"above train\.max_memory_gb = 1 GB"):
        load_data(DataConfig(name="digits", resize=4096), max_memory_gb=1)
    with pytest.raises(ConfigError, match=r"^data\.resize: .* above the cap of"):
        load_data(DataConfig(name="shapes", resize=1 << 17))  # the generator renders at 2^17


# ----------------------------------------------------------------------------- model

def _zoo() -> list[tuple[str, str | None, str, bool]]:
    out = []
    for name in MODELS:
        norms = ("none", "layer", "rms") if name in TRANSFORMERS else ("none", "batch", "group")
        for variant in VARIANTS.get(name, (None,)):
            for norm in norms:
                out.append((name, variant, norm, True))
        if name in ("resnet", "unet", "gpt", "vit"):
            out.append((name, None, "layer" if name in TRANSFORMERS else "batch", False))
    return out


@pytest.mark.parametrize(("name", "variant", "norm", "skip"), _zoo(),
                         ids=["-".join(map(str, case)) for case in _zoo()])
def test_fx_shape_rules_agree_with_a_meta_forward(name, variant, norm, skip):
    shape = {"unet": (2, 1, 32, 32), "gpt": (2, 32)}.get(name, (2, 3, 32, 32))
    width = {"mlp": 32, "gpt": 32, "vit": 32}.get(name, 0.5)
    cfg = ModelConfig(name=name, variant=variant, norm=norm, skip=skip, width=width,
                      dropout=0.2 if name in ("mlp", "alexnet", "gpt", "vit") else 0,
                      depth=2 if name in TRANSFORMERS else 6, qk_norm=norm != "none")
    with torch.device("meta"):
        model = MODELS[name](cfg, shape[1:], 10)
    fast = size.leaf_output_shapes(model, shape)
    assert fast is not None  # every zoo op has a shape rule: no slow meta path
    assert fast == size.meta_leaf_output_shapes(model, shape)


def test_an_op_without_a_rule_falls_back_to_the_meta_forward():
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.roll(x, 1, 0)

    model = nn.Sequential(nn.Linear(4, 3), Odd(), nn.ReLU()).to("meta")
    assert size.leaf_output_shapes(model, (5, 4)) is None
    assert size.meta_leaf_output_shapes(model, (5, 4)) == [(5, 3), (5, 3), (5, 3)]


def test_model_size_counts_parameters_and_activations():
    cfg = ModelConfig(name="mlp", depth=3, width=10)
    m = size.model_size(cfg, (1, 8, 8), 10, batch_size=4)
    assert m.n_params == (64 * 10 + 10) + (10 * 10 + 10) + (10 * 10 + 10)
    # input 4x64, then Linear, ReLU, Linear, ReLU, Linear outputs of 4x10 each
    assert m.train_activation_bytes == 4 * (4 * 64 + 5 * 4 * 10)
    assert m.largest_output_bytes == 4 * 4 * 64


def test_optimizer_state_tensors():
    expected = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2, "rmsprop": 1,
                "adagrad": 1}
    for name in OPTIMIZERS:
        cfg = load_config(tiny(optim={"name": name})).optim
        assert optimizer_state_tensors(cfg) == expected[name], name
    assert optimizer_state_tensors(load_config(tiny(optim={"momentum": 0.5})).optim) == 1
    assert optimizer_state_tensors(load_config(tiny(optim={"name": "rmsprop",
                                                             "momentum": 0.5})).optim) == 2


# ----------------------------------------------------------------------------- the run

def test_estimate_follows_the_documented_formula():
    cfg = load_config(tiny(optim={"name": "adam", "lr": 1e-3}))
    est = size.estimate_run_memory(cfg)
    m = size.model_size(cfg.model, (1, 8, 8), 10, cfg.data.batch_size)
    assert est.n_params == m.n_params
    assert est.param_bytes == 4 * m.n_params * (2 + 2 + size.RUN_COPIES)
    eval_bytes = 2 * m.largest_output_bytes / 64 * 512  # a chunk: the 512 training examples
    assert est.activation_bytes == int(max(2 * m.train_activation_bytes, eval_bytes))
    assert est.data_bytes == planned_size(cfg.data).nbytes
    assert est.host_bytes == est.total_bytes == est.data_bytes + est.model_bytes
    resized = size.estimate_run_memory(load_config(tiny(data={"resize": 16})))
    # while resizing, the float32 copy at the original 8x8 is held too
    assert resized.data_bytes == planned_size(load_config(tiny(data={"resize": 16})).data
                                              ).nbytes + planned_size(cfg.data).nbytes


def test_check_run_size_refuses_with_the_figures():
    cfg = load_config(tiny(model={"name": "resnet", "variant": "resnet18", "width": 8.0},
                           data={"name": "digits", "resize": 32, "subset": None}))
    est = size.estimate_run_memory(cfg)
    assert est.n_params > 5e8
    with pytest.raises(ConfigError) as err:
        size.check_run_size(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.width: the run needs about ")
    assert f"({est.n_params:.3g} parameters: " in message
    assert "set train.max_memory_gb to override" in message
    cfg.train.max_memory_gb = est.total_bytes / GB * 1.01
    assert size.check_run_size(cfg) == est  # the explicit override wins


def test_check_run_size_blames_the_batch_and_the_data():
    cfg = load_config(tiny(data={"batch_size": 512}, model={"name": "cnn", "width": 256},
                           train={"max_memory_gb": 0.1}))
    with pytest.raises(ConfigError, match=r"^data\.batch_size: the run needs about "):
        size.check_run_size(cfg)
    cfg = load_config(tiny(data={"resize": 1024}, model={"name": "mlp", "width": 4},
                           train={"max_memory_gb": 0.5}))
    with pytest.raises(ConfigError, match=r"^data\.resize: the run needs about .* above "
                                          r"train\.max_memory_gb = 0\.5 GB"):
        size.check_run_size(cfg)


def test_normal_configs_are_sized_fast():
    configs = [tiny(), tiny(model={"name": "resnet", "variant": "resnet56", "width": None},
                            data={"name": "mnist5k", "resize": 32}),
               tiny(model={"name": "vgg", "variant": "vgg16", "width": None},
                    data={"name": "mnist5k", "resize": 32}),
               tiny(model={"name": "unet", "width": None}, data={"name": "shapes"}),
               tiny(model={"name": "mlp", "depth": 100, "width": 256})]
    for raw in configs:
        cfg = load_config(raw)
        start = time.perf_counter()
        size.check_run_size(cfg)
        assert time.perf_counter() - start < 1.0, raw["model"]


def test_build_applies_threads_and_checks_the_size(one_thread):
    d = load_data(DataConfig(name="digits", subset=64))
    before = torch.get_num_threads()
    try:
        build(load_config(tiny(train={"threads": 2})), d)
        assert torch.get_num_threads() == 2
        build(load_config(tiny()), d)  # None: leaves the count alone
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match=r"above train\.max_memory_gb = 1e-06 GB"):
        build(load_config(tiny(train={"max_memory_gb": 1e-6})), d)
    assert np.isfinite(size.estimate_run_memory(load_config(tiny())).total_bytes)


def test_a_loaded_data_set_is_sized_as_loaded():
    cfg = load_config(tiny(data={"resize": 16}))
    d = load_data(cfg.data)
    assert d.size == planned_size(cfg.data)
    loaded = size.estimate_run_memory(cfg, d.size)
    planned = size.estimate_run_memory(cfg)
    assert loaded.data_bytes == d.size.nbytes  # no resize copy: it is done
    assert planned.data_bytes > loaded.data_bytes
    assert loaded.model_bytes == planned.model_bytes


def test_cuda_runs_hold_the_model_to_the_gpu_and_the_data_to_the_host(monkeypatch):
    """Without a GPU here: torch.cuda is stubbed with a GPU of 0.4 MB."""
    class Props:
        total_memory = 400_000

    seen = []
    monkeypatch.setattr(machine.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(machine.torch.cuda, "get_device_properties",
                        lambda index: seen.append(index) or Props())
    assert machine.device_memory_bytes("cuda:1") == 400_000 and seen == [1]
    cap = machine.memory_cap("cuda")
    assert cap.bytes == 300_000 and "cuda's memory" in cap.about
    cfg = load_config(tiny(train={"device": "cuda"}))
    est = size.estimate_run_memory(cfg)
    assert est.on_gpu and est.host_bytes == est.data_bytes
    assert est.model_bytes > 300_000 > est.data_bytes  # the model does not fit the stubbed GPU
    with pytest.raises(ConfigError, match=r"above the cap of 0\.3 MB \(75% of cuda's memory"):
        size.check_run_size(cfg)
    cfg.train.max_memory_gb = 1.0  # the override applies to both
    assert size.check_run_size(cfg) == est


def test_accumulation_holds_one_micro_batch_of_activations():
    from tests.conftest import tiny
    from trajreg.train.config import load_config
    from trajreg.train.size import estimate_run_memory

    def act(batch_size, accumulate):
        return estimate_run_memory(load_config(tiny(
            data={"batch_size": batch_size}, model={"width": 256},
            train={"accumulate": accumulate}))).activation_bytes

    assert act(256, 4) == act(64, 1) < act(256, 1)
