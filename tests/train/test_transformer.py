"""gpt and vit: causal masking, parameter counts by formula, and every switch changes
nothing else (parameter counts and torch.fx graphs, as tests/train/test_models.py)."""

from __future__ import annotations

import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from tests.train.graphs import graph_without
from trajreg.errors import ConfigError
from trajreg.train.models import ModelConfig, build_model, init_weights, n_params
from trajreg.train.transformer import GPT, GPT2_STD, ViT, residual_outputs, residual_scale

V, T = 11, 12  # vocabulary and sequence length of the gpt tests
IMAGE, K = (3, 8, 8), 5  # vit: images and classes
SMALL = {"width": 16, "depth": 2, "heads": 2, "block_size": 16, "patch_size": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cfg(name: str, **kw) -> ModelConfig:
    c = ModelConfig(name=name, **{**SMALL, **kw})
    c.validate()
    return c


def build(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    shape = (T,) if name == "gpt" else IMAGE
    return build_model(cfg(name, **kw), shape, V if name == "gpt" else K)


def inputs(name: str, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if name == "gpt":
        return torch.randint(V, (n, T), generator=g)
    return torch.randn(n, *IMAGE, generator=g)


# ----------------------------------------------------------------------------- forward

SWITCHES = [{}, {"norm": "layer"}, {"norm": "rms", "qk_norm": True},
            {"norm": "layer", "norm_position": "post"}, {"skip": False, "norm": "layer"},
            {"dropout": 0.2, "norm": "rms"}, {"tie": False}, {"init": "kaiming"},
            {"init": "gpt2_unscaled", "norm": "layer", "qk_norm": True}]


@pytest.mark.parametrize("name", ["gpt", "vit"])
@pytest.mark.parametrize("kw", SWITCHES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in
                                                                  kw.items()) or "defaults")
def test_shapes_and_one_training_step(name, kw):
    model = build(name, **kw)
    x = inputs(name)
    out = model.train()(x)
    assert out.shape == ((3, T, V) if name == "gpt" else (3, K))
    y = x if name == "gpt" else torch.tensor([0, 1, 4])  # next-token targets: any ids do
    loss = F.cross_entropy(out.flatten(0, -2), y.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    traced = fx.symbolic_trace(model.eval())  # every switch traces (size.py, graph tests)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("kw", [{}, {"norm": "layer", "qk_norm": True},
                                {"norm": "rms", "norm_position": "post"}, {"skip": False}])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_future_token_never_changes_an_earlier_position(kw, mode):
    model = build("gpt", **kw)
    model.train(mode == "train")
    x = inputs("gpt")
    with torch.no_grad():
        base = model(x)
        for j in range(T):
            changed = x.clone()
            changed[:, j] = (changed[:, j] + 1) % V
            out = model(changed)
            assert torch.equal(out[:, :j], base[:, :j])
            assert not torch.equal(out[:, j], base[:, j])  # and position j sees its own token


def test_vit_attends_to_every_patch():
    """No causal mask: the first patch's change reaches the whole (pooled) output, and so
    does the last's."""
    model = build("vit", norm="layer").eval()
    x = inputs("vit")
    with torch.no_grad():
        base = model(x)
        for rows in (slice(0, 4), slice(4, 8)):
            changed = x.clone()
            changed[:, :, rows, 4:] += 1
            assert not torch.equal(model(changed), base)


def test_a_sequence_shorter_than_block_size_works():
    model = build("gpt").eval()
    with torch.no_grad():
        full = model(inputs("gpt"))
        assert torch.equal(model(inputs("gpt")[:, :5]), full[:, :5])


# ----------------------------------------------------------------------------- counts

def _norm_params(norm: str, n: int) -> int:
    return {"none": 0, "layer": 2 * n, "rms": n}[norm]


def _expected(name: str, width: int = 16, depth: int = 2, heads: int = 2, norm: str = "none",
              qk_norm: bool = False, tie: bool = True, block_size: int = 16,
              patch_size: int = 4) -> int:
    """Counted by hand from the architecture (weights and biases)."""
    d = width
    block = ((d * 3 * d + 3 * d) + (d * d + d)  # attention: qkv, output projection
             + (d * 4 * d + 4 * d) + (4 * d * d + d)  # MLP
             + 2 * _norm_params(norm, d)  # the block's two norms
             + (2 * _norm_params(norm, d // heads) if qk_norm else 0))
    total = depth * block + _norm_params(norm, d)  # and the final norm
    if name == "gpt":
        return total + V * d + block_size * d + (0 if tie else V * d)
    c, h, w = IMAGE
    patches = (h // patch_size) * (w // patch_size)
    return total + (c * patch_size**2 * d + d) + patches * d + (d * K + K)


@pytest.mark.parametrize("name", ["gpt", "vit"])
@pytest.mark.parametrize("kw", [{}, {"norm": "layer"}, {"norm": "rms"}, {"tie": False},
                                {"norm": "layer", "qk_norm": True, "heads": 4},
                                {"norm": "rms", "qk_norm": True, "width": 24, "heads": 3},
                                {"depth": 3, "block_size": 20, "patch_size": 2},
                                {"norm_position": "post", "norm": "layer", "skip": False}])
def test_parameter_counts_by_formula(name, kw):
    formula = {k: v for k, v in kw.items() if k not in ("norm_position", "skip")}
    if name == "vit":
        formula.pop("tie", None)
    assert n_params(build(name, **kw)) == _expected(name, **formula)


def test_default_sizes():
    """Defaults: width 64, 6 blocks, 4 heads, no norm, tied, GPT-2 init."""
    c = ModelConfig(name="gpt")
    c.validate()
    c.resolve()
    assert (c.width, c.depth, c.heads, c.block_size, c.norm_position, c.qk_norm, c.tie,
            c.patch_size) == (64, 6, 4, 64, "pre", False, True, 4)
    with torch.device("meta"):
        gpt = build_model(c, (64,), 64)
        vit = build_model(ModelConfig(name="vit"), (3, 32, 32), 10)
    assert n_params(gpt) == 6 * (12 * 64 * 64 + 9 * 64) + 64 * 64 + 64 * 64 == 306_560
    assert n_params(vit) == 6 * (12 * 64 * 64 + 9 * 64) + 3 * 16 * 64 + 64 + 64 * 64 + 650


def test_tied_embedding_is_one_parameter():
    tied, untied = build("gpt"), build("gpt", tie=False)
    assert isinstance(tied, GPT)
    assert tied.head.weight is tied.tok.weight
    assert sum(1 for _ in tied.parameters()) == sum(1 for _ in untied.parameters()) - 1
    assert n_params(untied) - n_params(tied) == V * 16
    assert untied.head.weight is not untied.tok.weight
    tied.head.weight.grad = None
    F.cross_entropy(tied(inputs("gpt")).flatten(0, 1), inputs("gpt").flatten()).backward()
    assert tied.tok.weight.grad is tied.head.weight.grad  # one gradient from both uses


# ----------------------------------------------------------------------------- switches

def _is_norm(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target],
                                                   (nn.LayerNorm, nn.RMSNorm))


def _is_qk(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and node.target.split(".")[-1] in ("q_norm", "k_norm")


def _is_add(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.target is operator.add and "pos" not in str(node.meta.get("nn_module_stack"))


def _is_dropout(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], nn.Dropout)


def _own_params(model: nn.Module, types: tuple[type, ...] = (), names: tuple[str, ...] = ()):
    return sum(p.numel() for name, m in model.named_modules()
               if isinstance(m, types) or name.split(".")[-1] in names
               for p in m.parameters(recurse=False))


# (technique, config with it on, config with it off, its own nodes, its own parameters)
PAIRS = [
    ("norm-layer", {"norm": "layer"}, {}, _is_norm, 2 * 16 * (2 * 2 + 1)),
    ("norm-rms", {"norm": "rms"}, {}, _is_norm, 16 * (2 * 2 + 1)),
    ("norm-post", {"norm": "rms", "norm_position": "post"}, {"norm_position": "post"},
     _is_norm, 16 * (2 * 2 + 1)),
    ("qk_norm-layer", {"norm": "layer", "qk_norm": True}, {"norm": "layer"}, _is_qk,
     2 * 2 * 2 * 8),
    ("qk_norm-rms", {"norm": "rms", "qk_norm": True}, {"norm": "rms"}, _is_qk, 2 * 2 * 8),
    ("skip", {"norm": "layer"}, {"norm": "layer", "skip": False}, _is_add, 0),
    ("dropout", {"dropout": 0.3}, {}, _is_dropout, 0),
]


@pytest.mark.parametrize("name", ["gpt", "vit"])
@pytest.mark.parametrize(("technique", "on", "off", "own", "params"), PAIRS,
                         ids=[p[0] for p in PAIRS])
def test_a_switch_changes_only_its_own_parameters_and_nodes(name, technique, on, off, own,
                                                            params):
    model_on, model_off = build(name, **on), build(name, **off)
    assert n_params(model_on) - n_params(model_off) == params
    if technique.startswith("norm"):
        assert _own_params(model_on, (nn.LayerNorm, nn.RMSNorm)) == params
        assert _own_params(model_off, (nn.LayerNorm, nn.RMSNorm)) == 0
    if technique.startswith("qk_norm"):
        assert _own_params(model_on, names=("q_norm", "k_norm")) == params
    full_on, stripped_on = graph_without(model_on, own)
    full_off, stripped_off = graph_without(model_off, own)
    assert full_on != full_off
    assert stripped_on == stripped_off
    if technique == "skip":  # two residual additions a block
        assert len(full_on) - len(full_off) == 2 * 2


@pytest.mark.parametrize("name", ["gpt", "vit"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_post_norm_differs_from_pre_norm_only_in_norm_placement(name, norm):
    pre, post = build(name, norm=norm), build(name, norm=norm, norm_position="post")
    assert n_params(pre) == n_params(post)
    assert [(k, v.shape) for k, v in pre.state_dict().items()] == \
        [(k, v.shape) for k, v in post.state_dict().items()]
    full_pre, stripped_pre = graph_without(pre, _is_norm)
    full_post, stripped_post = graph_without(post, _is_norm)
    assert full_pre != full_post and sorted(full_pre) == sorted(full_post)
    assert stripped_pre == stripped_post
    # pre: a block's norm comes before its attention's qkv; post: after its addition
    def first(full, prefix):
        return next(i for i, n in enumerate(full) if n[1].startswith(prefix))

    norms, qkv = ("LayerNorm", "RMSNorm"), "Linear(in_features=16, out_features=48"
    assert first(full_pre, norms) < first(full_pre, qkv)
    assert first(full_post, norms) > first(full_post, qkv)


def test_no_switch_adds_placeholder_modules():
    for name in ("gpt", "vit"):
        model = build(name)
        assert not any(isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.Dropout, nn.Identity))
                       for m in model.modules())


# ----------------------------------------------------------------------------- init

def test_building_is_deterministic_given_the_seed():
    for name in ("gpt", "vit"):
        for init in ("default", "gpt2_unscaled", "kaiming"):
            a, b = build(name, init=init, norm="layer"), build(name, init=init, norm="layer")
            c = build(name, seed=1, init=init, norm="layer")
            sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
            assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", ["gpt", "vit"])
def test_gpt2_init_scales_exactly_the_residual_projections(name):
    scaled, unscaled = build(name, init="gpt2", norm="layer"), \
        build(name, init="gpt2_unscaled", norm="layer")
    s, u = scaled.state_dict(), unscaled.state_dict()
    projections = {k for k in s if k.endswith(("attn.proj.weight", "mlp.proj.weight"))}
    assert len(projections) == 2 * 2 == len(residual_outputs(scaled))
    factor = residual_scale(2)
    assert factor == 1 / math.sqrt(4)
    for k in s:
        if k in projections:
            assert torch.equal(s[k], u[k] * factor)
        else:
            assert torch.equal(s[k], u[k]), k
    for k, v in u.items():  # N(0, 0.02) weights and embeddings, zero biases, unit norms
        if k.endswith("bias"):
            assert torch.count_nonzero(v) == 0
        elif "norm" in k:
            assert torch.all(v == 1)


def test_the_default_init_is_gpt2_scaled():
    """A wide gpt's weights have GPT-2's spread; its residual projections 1/sqrt(2 depth)."""
    torch.manual_seed(0)
    model = build_model(cfg("gpt", width=128, depth=8, heads=4), (T,), 500)
    assert abs(model.tok.weight.std().item() - GPT2_STD) < 0.001
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - GPT2_STD) < 0.001
    assert abs(model.pos.weight.std().item() - GPT2_STD) < 0.002
    want = GPT2_STD / math.sqrt(16)
    for m in residual_outputs(model):
        assert abs(m.weight.std().item() - want) < 0.1 * want
        assert torch.count_nonzero(m.bias) == 0


def test_gpt2_init_works_on_the_other_nets_and_existing_schemes_on_these():
    torch.manual_seed(0)
    mlp = build_model(ModelConfig(name="mlp", depth=3, width=8, init="gpt2"), (20,), 4)
    assert all(torch.count_nonzero(m.bias) == 0 for m in mlp.modules()
               if isinstance(m, nn.Linear))
    model = build("gpt", init="orthogonal", norm="rms")
    w = model.blocks[0].attn.proj.weight
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.RMSNorm))
    init_weights(model, "gpt2_unscaled")
    assert model.blocks[0].attn.proj.weight.std().item() > 0.01


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("name", "kw", "pattern"), [
    ("gpt", {"heads": 3}, r"^model\.heads: 3 does not divide model\.width 16 "),
    ("vit", {"width": None, "heads": 5}, r"^model\.heads: 5 does not divide model\.width 64 "),
    ("gpt", {"norm": "batch"}, r"^model\.norm: gpt takes none, layer, rms \(batch is for"),
    ("vit", {"norm": "group"}, r"^model\.norm: vit takes none, layer, rms \(group is for"),
    ("mlp", {"norm": "rms"}, r"^model\.norm: unknown value 'rms'"),
    ("gpt", {"qk_norm": True}, r"^model\.qk_norm: needs model\.norm layer or rms"),
    ("gpt", {"norm_position": "sandwich"}, r"^model\.norm_position: unknown value"),
    ("gpt", {"block_size": 0}, r"^model\.block_size: must be"),
    ("vit", {"patch_size": 0}, r"^model\.patch_size: must be"),
    ("gpt", {"heads": 0}, r"^model\.heads: must be"),
    ("gpt", {"width": 16.5}, r"^model\.width: gpt's d_model must be a whole number"),
    ("gpt", {"variant": "gpt2"}, r"^model\.variant: gpt has no variants"),
])
def test_config_errors_name_the_key(name, kw, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        cfg(name, **kw)
    assert "\n" not in str(info.value)


def test_transformer_keys_are_accepted_and_ignored_by_the_other_nets():
    cfg("mlp", heads=3, norm_position="post", qk_norm=True, patch_size=5, tie=False)
    cfg("resnet", width=0.25, heads=3)  # heads need not divide a channel multiplier


@pytest.mark.parametrize(("name", "shape", "pattern"), [
    ("vit", (3, 8, 10), r"^model\.patch_size: 4 does not divide the images' height and "
                        r"width 8x10"),
    ("vit", (20,), r"^model\.name: vit needs image inputs"),
    ("gpt", (1, 8, 8), r"^model\.name: gpt needs token sequences \(T,\)"),
    ("gpt", (17,), r"^model\.block_size: 16 is shorter than the data's sequence length 17; "
                   r"set model\.block_size to 17 or more"),
])
def test_input_shape_errors(name, shape, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_model(cfg(name), shape, 10)


def test_classes():
    assert isinstance(build("vit"), ViT) and isinstance(build("gpt"), GPT)
