"""The model zoo: every model x technique trains, and each technique changes nothing else."""

from __future__ import annotations

import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from tests.train.graphs import graph_without
from trajreg.errors import ConfigError
from trajreg.train.config import ACTIVATIONS, INITS, NORMS, ModelConfig
from trajreg.train.models import (
    DEFAULT_WIDTH,
    MODELS,
    TECHNIQUE_MODULES,
    TRANSFORMERS,
    VARIANTS,
    build_model,
    model_width,
    n_params,
)

# Small, fast settings for each model: config overrides, input shape (C, H, W), classes.
SMALL = {
    "mlp": ({"width": 16, "depth": 3}, (1, 28, 28), 10),
    "cnn": ({"width": 4}, (1, 28, 28), 10),
    "alexnet": ({"width": 0.125}, (3, 32, 32), 10),
    "vgg": ({"width": 0.125}, (3, 32, 32), 10),
    "resnet": ({"width": 0.25}, (3, 32, 32), 10),
    "unet": ({"width": 0.25}, (1, 32, 32), 3),
}
TINY_WIDTH = {"vgg19": 0.0625, "resnet56": 0.125, "resnet18": 0.125, "resnet34": 0.0625}
# the transformers' switches differ (norms, no activation switch): tests/train/test_transformer.py
ZOO = [name for name in MODELS if name not in TRANSFORMERS]
SKIP_MODELS = ("resnet", "unet")
DROPOUT_MODELS = ("mlp", "alexnet")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread avoids thread-sync overhead that
    dominates (and explodes when the cores are shared) at this size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cfg(name: str, **overrides) -> ModelConfig:
    base = dict(SMALL[name][0])
    if overrides.get("variant") in TINY_WIDTH:
        base["width"] = TINY_WIDTH[overrides["variant"]]
    base.update(overrides)
    return ModelConfig(name=name, **base)


def build(name: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    _, shape, k = SMALL[name]
    return build_model(make_cfg(name, **overrides), shape, k)


def _cases() -> list[tuple[str, dict]]:
    """One technique changed at a time from relu / no norm / skip / no dropout / default."""
    out: dict[str, tuple[str, dict]] = {}

    def add(name: str, **kw) -> None:
        out[f"{name}-" + "-".join(f"{k}={v}" for k, v in kw.items())] = (name, kw)

    for name in ZOO:
        for act in ACTIVATIONS:
            add(name, activation=act)
        for norm in NORMS:
            add(name, norm=norm)
        for init in INITS:
            add(name, init=init)
        if name in DROPOUT_MODELS:
            add(name, dropout=0.0)
            add(name, dropout=0.3)
        if name in SKIP_MODELS:
            for skip in (True, False):
                add(name, skip=skip)
                add(name, skip=skip, norm="batch")
        for variant in VARIANTS.get(name, ()):
            add(name, variant=variant)
            if name == "resnet":
                add(name, variant=variant, skip=False)
    out.pop("resnet-variant=resnet18-skip=False")  # covered below with a norm
    add("resnet", variant="resnet18", skip=False, norm="group")
    return list(out.values())


CASES = _cases()


def _batch(name: str, shape: tuple[int, ...], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, *shape, generator=g)
    if name == "unet":
        return x, torch.randint(k, (4, *shape[1:]), generator=g)
    return x, torch.randint(k, (4,), generator=g)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One SGD step: finite loss, a finite gradient for every parameter, the output moves."""
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    logits = model(x)
    assert logits.shape == (len(x), *_expected_tail(y, logits))
    loss = F.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    optimizer.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert changed[-1]  # the output layer; deep plain nets may move their first layers < ulp


def _expected_tail(y: torch.Tensor, logits: torch.Tensor) -> tuple[int, ...]:
    return (logits.shape[1], *y.shape[1:])


@pytest.mark.parametrize(("name", "overrides"), CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for n, o in CASES])
def test_every_model_and_technique_trains_one_step(name, overrides):
    _, shape, k = SMALL[name]
    model = build(name, **overrides)
    _train_step(model, *_batch(name, shape, k))


@pytest.mark.parametrize("shape", [(20,), (3, 10)])
def test_mlp_takes_vector_inputs(shape):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", depth=3, width=8, norm="batch"), shape, 5)
    x = torch.randn(4, *shape)
    _train_step(model, x, torch.tensor([0, 1, 2, 4]))


# ----------------------------------------------------------------------------- structure

def _in_shortcut(node: fx.Node) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    paths = list(stack) + ([node.target] if node.op == "call_module" else [])
    return any("shortcut" in str(path).split(".") for path in paths)


def _is_technique(node: fx.Node, modules: dict[str, nn.Module], technique: str) -> bool:
    if technique == "skip":
        return (node.target in (operator.add, torch.zeros_like)) or _in_shortcut(node)
    return node.op == "call_module" and isinstance(modules[node.target],
                                                   TECHNIQUE_MODULES[technique])


def _graph(model: nn.Module, technique: str) -> tuple[list, list]:
    return graph_without(model, lambda node, modules: _is_technique(node, modules,
                                                                    technique))


def _technique_params(model: nn.Module, technique: str) -> int:
    if technique == "skip":
        return sum(p.numel() for name, m in model.named_modules()
                   if name.endswith("shortcut") for p in m.parameters())
    return sum(p.numel() for m in model.modules() if isinstance(m, TECHNIQUE_MODULES[technique])
               for p in m.parameters(recurse=False))


def _pairs() -> list[tuple[str, str, dict, dict]]:
    """(model, technique, config with it on, config with it off)."""
    out = []
    for name in ZOO:
        for norm in NORMS[1:]:
            out.append((name, "norm", {"norm": norm}, {"norm": "none"}))
        out.append((name, "norm", {"norm": "batch", "skip": False}, {"skip": False}))
        for act in ACTIVATIONS:
            if act != "identity":
                out.append((name, "activation", {"activation": act},
                            {"activation": "identity"}))
    for name in DROPOUT_MODELS:
        out.append((name, "dropout", {"dropout": 0.5}, {"dropout": 0.0}))
    for name in SKIP_MODELS:
        out.append((name, "skip", {"norm": "batch"}, {"norm": "batch", "skip": False}))
    for variant in VARIANTS["resnet"]:
        out.append(("resnet", "skip", {"variant": variant}, {"variant": variant, "skip": False}))
    return out


PAIRS = _pairs()


@pytest.mark.parametrize(("name", "technique", "on", "off"), PAIRS,
                         ids=[f"{p[0]}-{p[1]}-{'-'.join(map(str, p[2].values()))}"
                              for p in PAIRS])
def test_a_technique_changes_only_its_own_parameters_and_nodes(name, technique, on, off):
    model_on, model_off = build(name, **on), build(name, **off)
    own = _technique_params(model_on, technique)
    assert n_params(model_on) - n_params(model_off) == own
    assert _technique_params(model_off, technique) == 0
    if technique == "skip":
        variant = on.get("variant")
        if name == "unet" or variant in (None, "resnet20", "resnet32", "resnet56"):
            assert own == 0  # zeros in the skips' place; option-A shortcuts have no parameters
        else:
            assert own > 0  # resnet18/34: exactly the projection shortcuts
    if technique in ("activation", "dropout"):
        assert own == 0
    if technique == "norm":
        assert own > 0
    full_on, stripped_on = _graph(model_on, technique)
    full_off, stripped_off = _graph(model_off, technique)
    assert full_on != full_off
    assert stripped_on == stripped_off


@pytest.mark.parametrize("name", ZOO)
def test_no_norm_adds_no_placeholder_modules(name):
    model = build(name, norm="none", activation="relu")
    assert not any(isinstance(m, (*TECHNIQUE_MODULES["norm"], nn.Identity, nn.Dropout))
                   for m in model.modules())


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_group_norm_rule(norm):
    for name in ("vgg", "resnet", "unet", "mlp"):
        model = build(name, norm=norm, width=0.375 if name != "mlp" else 12)
        groups = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
        assert groups
        for m in groups:
            if isinstance(m, nn.LayerNorm):
                assert name == "mlp" and norm == "layer"
                continue
            expected = 1 if norm == "layer" else math.gcd(m.num_channels, 8)
            assert m.num_groups == expected and m.num_channels % m.num_groups == 0


def test_skip_off_removes_every_shortcut_module():
    for variant in VARIANTS["resnet"]:
        model = build("resnet", variant=variant, skip=False)
        assert not [n for n, _ in model.named_modules() if n.endswith("shortcut")]
    with_skip = build("resnet", variant="resnet18", norm="batch")
    shortcuts = [m for n, m in with_skip.named_modules() if n.endswith("shortcut")]
    assert len(shortcuts) == 3 and all(isinstance(m[0], nn.Conv2d) for m in shortcuts)


# ----------------------------------------------------------------------------- sizes

def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_width_scales_channels():
    assert _first_conv(build("vgg", width=0.5)).out_channels == 32
    assert _first_conv(build("vgg", width=1.0)).out_channels == 64
    alex = build("alexnet", width=0.5)
    assert _first_conv(alex).out_channels == 32
    assert [m.out_features for m in alex.modules() if isinstance(m, nn.Linear)] == [512, 512, 10]
    assert _first_conv(build("resnet", width=0.5)).out_channels == 8
    assert _first_conv(build("resnet", variant="resnet18", width=0.25)).out_channels == 16
    assert _first_conv(build("unet", width=0.5)).out_channels == 8
    assert _first_conv(build("cnn", width=16)).out_channels == 16
    assert _first_conv(build("vgg", width=0.001)).out_channels == 1
    vgg = build("vgg", width=0.25)
    assert [m.out_channels for m in vgg.modules() if isinstance(m, nn.Conv2d)] == [
        16, 32, 64, 64, 128, 128, 128, 128]


def test_defaults_and_parameter_counts_at_width_one():
    """Standard sizes (10 classes, 32x32; biases kept in every conv)."""
    def count(name, shape=(3, 32, 32), k=10, **kw):
        return _meta_count(name, shape, k, width=1, **kw)

    assert count("resnet") == count("resnet", variant="resnet20") == 269_034
    assert count("resnet", norm="batch") == 270_410  # the usual "0.27M"
    assert count("vgg") == count("vgg", variant="vgg11")
    assert count("vgg", variant="vgg16") == 14_719_818  # 14.7M convs + one Linear


def test_building_is_deterministic_given_the_seed():
    for name, init in [("vgg", "default"), ("resnet", "kaiming"), ("unet", "orthogonal"),
                       ("alexnet", "xavier"), ("mlp", "kaiming")]:
        a, b = build(name, init=init, norm="batch"), build(name, init=init, norm="batch")
        c = build(name, seed=1, init=init, norm="batch")
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("init", ["kaiming", "xavier", "orthogonal"])
def test_init_schemes_zero_biases_and_reset_norms(init):
    model = build("resnet", init=init, norm="batch", activation="tanh")
    default = build("resnet", init="default", norm="batch", activation="tanh")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0
    assert any(torch.count_nonzero(m.bias) > 0 for m in default.modules()
               if isinstance(m, nn.Conv2d))
    if init == "orthogonal":
        w = model.classifier.weight  # (10, 16): orthonormal rows
        assert torch.allclose(w @ w.T, torch.eye(10), atol=1e-5)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("name", "shape", "pattern"), [
    ("vgg", (3, 16, 16), r"^model\.name: vgg needs images of side >= 32 .*set data\.resize"),
    ("alexnet", (1, 4, 4), r"^model\.name: alexnet needs images of side >= 8 .*data\.resize"),
    ("cnn", (1, 3, 3), r"^model\.name: cnn needs images of side >= 4 .*data\.resize"),
    ("unet", (1, 28, 28),
     r"^model\.name: unet needs .* multiples of 8 .*set data\.resize to e\.g\. 32"),
    *[(name, (3, 100), rf"^model\.name: {name} needs image inputs \(C, H, W\)")
      for name in ("cnn", "alexnet", "vgg", "resnet", "unet")],
])
def test_shape_errors_name_the_needed_input(name, shape, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_model(ModelConfig(name=name, width=0.25), shape, 10)


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^model\.variant: unknown value 'resnet20'"):
        ModelConfig(name="vgg", variant="resnet20").validate()
    with pytest.raises(ConfigError, match=r"^model\.variant: mlp has no variants"):
        ModelConfig(name="mlp", variant="vgg11").validate()


# ----------------------------------------------------------------------------- defaults

def _meta_count(name: str, shape: tuple[int, ...] = (3, 32, 32), k: int = 10, **kw) -> int:
    """Parameters of the model at its default config, built on the meta device (no
    storage, so full-size nets cost nothing)."""
    with torch.device("meta"):
        return n_params(MODELS[name](ModelConfig(name=name, **kw), shape, k))


# (name, overrides, input shape, classes, exact count here, published figure, tolerance)
PUBLISHED = [
    ("resnet", {"variant": "resnet20"}, (3, 32, 32), 10, 269_034, 0.27e6, 0.02),
    ("resnet", {"variant": "resnet32"}, (3, 32, 32), 10, 463_018, 0.46e6, 0.02),
    ("resnet", {"variant": "resnet56"}, (3, 32, 32), 10, 850_986, 0.85e6, 0.02),
    ("resnet", {"variant": "resnet18"}, (3, 32, 32), 10, 11_169_162, 11.2e6, 0.02),
    ("resnet", {"variant": "resnet34"}, (3, 32, 32), 10, 21_273_610, 21.3e6, 0.02),
    ("vgg", {"variant": "vgg11"}, (3, 32, 32), 10, 9_225_610, 9.2e6, 0.02),
    ("vgg", {"variant": "vgg16"}, (3, 32, 32), 10, 14_719_818, 14.7e6, 0.02),
    # no single published figure for these: computed here and documented in models.py
    ("alexnet", {}, (3, 32, 32), 10, 7_706_442, None, 0.0),
    ("cnn", {}, (3, 32, 32), 10, 25_578, None, 0.0),
    ("unet", {}, (1, 32, 32), 4, 481_796, None, 0.0),
    ("mlp", {}, (1, 8, 8), 10, 21_450, None, 0.0),  # digits: 64 inputs, depth 6, width 64
    # 6 blocks of width 64 (4 heads), no norm, tied: 64-token vocabulary, 64 positions
    ("gpt", {}, (64,), 64, 306_560, None, 0.0),
    ("vit", {}, (3, 32, 32), 10, 306_250, None, 0.0),  # 8x8 patches of 4x4, mean pooling
]


@pytest.mark.parametrize(("name", "kw", "shape", "k", "exact", "published", "tol"), PUBLISHED,
                         ids=[f"{p[0]}-{p[1].get('variant', 'default')}" for p in PUBLISHED])
def test_default_parameter_counts_match_published_figures(name, kw, shape, k, exact,
                                                          published, tol):
    """Every zoo model at its default config (width unset) on its usual input."""
    count = _meta_count(name, shape, k, **kw)
    assert count == exact
    if published is not None:
        assert abs(count - published) <= tol * published


def test_unset_width_is_the_family_default():
    assert DEFAULT_WIDTH == {"mlp": 64, "cnn": 16, "alexnet": 1.0, "vgg": 1.0, "resnet": 1.0,
                             "unet": 1.0, "gpt": 64, "vit": 64}
    for name in MODELS:
        shape, k = {"unet": ((1, 32, 32), 4), "gpt": ((32,), 50)}.get(name, ((3, 32, 32), 10))
        assert model_width(ModelConfig(name=name)) == DEFAULT_WIDTH[name]
        assert _meta_count(name, shape, k) == _meta_count(name, shape, k,
                                                          width=DEFAULT_WIDTH[name])
    # the cnn's width is its first block's channel count
    with torch.device("meta"):
        cnn = build_model(ModelConfig(name="cnn"), (3, 32, 32), 10)
    assert [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)] == [16, 32]


def test_builders_trust_the_config_but_check_the_input_shape():
    """What a config cannot know (the data set's shape) is still one ConfigError."""
    with pytest.raises(ConfigError, match=r"^model\.name: resnet needs image inputs"):
        build_model(ModelConfig(name="resnet"), (40,), 10)


@pytest.mark.parametrize("shape", [(64, 16, 8, 8), (3, 5, 7, 9), (2, 1, 2, 3), (4, 8, 16, 15)])
def test_max_pool_2x2_is_max_pool2d_bit_for_bit(shape):
    """Evaluation's quarter-grid pooling gives max_pool2d's values (ties, NaN, odd sides),
    and with autograd the module is max_pool2d, gradients and all."""
    from trajreg.train.models import MaxPool2d, max_pool_2x2

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.relu(torch.randn(shape, generator=g)).round(decimals=1)  # zeros and ties
    x.view(-1)[:: 13] = math.nan
    expected = F.max_pool2d(x, 2)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            got = max_pool_2x2(x)
        assert got.shape == expected.shape and got.is_contiguous()
        assert torch.equal(got.isnan(), expected.isnan())
        assert torch.equal(got.nan_to_num(-1.0), expected.nan_to_num(-1.0))
    a, b = x.nan_to_num(0.5).requires_grad_(), x.nan_to_num(0.5).requires_grad_()
    up = torch.randn(expected.shape, generator=g)
    (MaxPool2d()(a) * up).sum().backward()
    (nn.MaxPool2d(2)(b) * up).sum().backward()
    assert torch.equal(a.grad, b.grad)
