"""The study's networks; every training technique is a switch that changes nothing else.

This module and ``optim.py`` and ``data.py`` hold the registries that own every allowed
name (``MODELS``, ``VARIANTS``, ``ACTIVATION_LAYERS``, ``NORM_LAYERS``, ``INIT_SCHEMES``);
``config.py`` derives its choices from them and validates a config once, so the builders
here trust their input. They check only what a config cannot know: whether the data
set's input shape suits the model.

Models (``MODELS``), built by ``build_model(cfg, input_shape, n_classes)``. ``width`` is
per family (``DEFAULT_WIDTH`` when unset, ``model_width``):

* ``mlp`` -- ``depth`` linear layers, ``int(width)`` hidden units (default 64); each hidden
  layer is Linear -> norm -> activation (-> Dropout when ``dropout > 0``). Any input shape
  is flattened, so (F,) and (C, L) inputs work. Default on digits (64 inputs, depth 6):
  21,450 parameters.
* ``cnn`` -- the small benchmark CNN: two blocks conv3x3 -> norm -> activation -> max-pool 2,
  then one Linear. Base channels 1 and 2, so ``width`` is the first block's channel count
  (default 16: 16 and 32 channels, 25,578 parameters on CIFAR's 3x32x32 with 10 classes).
  Needs images of side >= 4.
* ``alexnet`` -- CIFAR-style AlexNet. Five convs with base channels 64-192-384-256-256
  (conv1 and conv2 5x5, conv3-5 3x3, all stride 1 with "same" padding), each
  conv -> norm -> activation, with 2x2 max-pooling after conv1, conv2 and conv5; then three
  Linear layers: features -> 1024 -> 1024 -> n_classes (hidden size base 1024, scaled by
  ``width``), activation after the two hidden ones and Dropout before each of the first
  two when ``dropout > 0``. Needs images of side >= 8 (32x32: 256 x 4 x 4 features).
  Default (width 1) on CIFAR: 7,706,442 parameters (2.45M in the convs, 5.26M in the
  Linear layers).
* ``vgg`` -- VGG-11/13/16/19 convolution stacks (base channels 64..512), conv3x3 -> norm
  -> activation, five 2x2 max-poolings, then a single Linear classifier on the flattened
  features (the usual CIFAR VGG; 512 features at 32x32). Needs images of side >= 32.
  Default (width 1) on CIFAR: VGG-11 9,225,610, VGG-16 14,719,818 parameters.
* ``resnet`` -- ``resnet20/32/56``: He et al.'s CIFAR ResNets, a 3x3 stem and three stages
  of 3/5/9 BasicBlocks with base channels 16/32/64, parameter-free "option A" shortcuts
  (stride-2 subsampling plus zero-padding of the new channels).
  ``resnet18/34``: BasicBlocks [2,2,2,2] / [3,4,6,3] with base channels 64..512, a
  CIFAR-style 3x3 stride-1 stem without max-pooling, projection shortcuts (1x1 conv ->
  norm) where the shape changes. Both end in global average pooling and one Linear.
  A block computes activation(F(x) + shortcut(x)); with ``skip: false`` it computes
  activation(F(x)) and has no shortcut module. Default (width 1, norm none, conv biases
  kept) on CIFAR: ResNet-20/32/56 269,034 / 463,018 / 850,986, ResNet-18 11,169,162 and
  ResNet-34 21,273,610 parameters (the published 0.27M / 0.46M / 0.85M / 11.2M / 21.3M).
* ``unet`` -- a U-Net with three 2x2 max-pool downsamplings: encoder double-conv blocks of
  base 16, 32, 64 channels, a 128-channel bottleneck, decoder levels of 2x2 stride-2
  transposed convs (halving the channels) whose output is concatenated with the
  encoder's features at that level and fed to a double-conv, then a 1x1 conv to
  ``n_classes`` logits per pixel: output (N, n_classes, H, W). A double-conv is
  (conv3x3 -> norm -> activation) twice. With ``skip: false`` zeros of the encoder
  features' shape are concatenated instead, so every layer keeps its size.
  Needs H and W to be multiples of 8. Default (width 1) with 1 input channel and 4
  classes (``shapes``): 481,796 parameters.
* ``gpt`` -- a decoder-only transformer (``transformer.GPT``): int64 token ids (B, T) ->
  logits (B, T, n_classes), n_classes being the data set's vocabulary; input shape (T,)
  with T <= ``block_size`` (else ``ConfigError`` naming model.block_size). Token and learned
  position embeddings (-> dropout), ``depth`` causal blocks of ``heads`` heads over
  ``width`` = d_model features, a final norm (the blocks' type), a bias-free head tied to
  the token embedding (``tie: true``; one Parameter). Default (width 64, depth 6, heads 4,
  block_size 64, no norm) with a 64-token vocabulary: 306,560 parameters.
* ``vit`` -- a vision transformer (``transformer.ViT``) on (C, H, W) images -> (B,
  n_classes): a strided ``patch_size`` x ``patch_size`` Conv2d patch embedding
  (``patch_size`` must divide H and W), learned position embeddings, the same blocks
  without the causal mask, a final norm, mean pooling over the patches (no class token)
  and a Linear head. Default on CIFAR's 3x32x32 (64 patches of 4x4): 306,250 parameters.

  Both share one ``transformer.Block``: attention (one Linear to q, k, v;
  ``F.scaled_dot_product_attention``, causal for gpt; an output projection) and an MLP
  (Linear to 4 ``width``, GELU, Linear back; ``activation`` does not apply), each a
  residual branch ending in dropout when ``dropout > 0`` (which also drops attention
  weights in train mode). Their switches, each changing nothing else:
  ``norm`` (none, layer: LayerNorm, rms: RMSNorm; batch and group are refused),
  ``norm_position`` (pre: x + f(norm(x)), post: norm(x + f(x)), Xiong et al. 2020; the
  final norm is there either way), ``skip`` (false: x is replaced by f(...), no
  addition), ``qk_norm`` (a norm of the chosen type over each head's queries and keys,
  shared by the heads; needs a norm). The keys ``heads``, ``block_size``,
  ``norm_position``, ``qk_norm``, ``patch_size`` and ``tie`` (``TRANSFORMER_KEYS``) are
  accepted and ignored by the other nets, which leave them out of ``RunConfig.to_dict``
  at their defaults, so the run ids of earlier configs hold.

Switches, shared by every model:

* ``activation`` -- ``ACTIVATION_LAYERS``; ``identity`` (``nn.Identity``) removes every
  activation: the mlp becomes linear; the conv nets keep their max-pooling, which is
  piecewise linear, so they are linear only between pooling decisions (as in the
  paper's "without nonlinear activation"); batch norm in train mode also mixes the
  batch. ``nn.Identity`` is used for nothing else, so every activation is a module.
* ``norm`` -- ``none`` adds no module at all (gpt and vit: see above); for conv features
  ``batch`` is BatchNorm2d,
  ``layer`` GroupNorm(1, C) and ``group`` GroupNorm(gcd(C, 8), C) (``group_count``); for
  the mlp's (N, width) features BatchNorm1d, LayerNorm and GroupNorm(gcd(width, 8), width).
  AlexNet and VGG normalise their conv layers only (as torchvision's ``*_bn`` models).
  Convs and Linears keep their biases either way, so the norm switch changes the
  parameter count by exactly the norm layers' affine parameters.
* ``width`` -- per family, default ``DEFAULT_WIDTH``: the mlp's hidden units (64); the
  cnn's first-block channels (16); for alexnet, vgg, resnet and unet a multiplier (1.0,
  the standard size): every layer's channels are ``max(1, round(base * width))``
  (``channels``), hidden FC sizes included; gpt's and vit's d_model (64).
* ``init`` -- ``default`` keeps the model's own initialisation: PyTorch's, GPT-2's
  (``gpt2``) for gpt and vit. ``kaiming``
  (``kaiming_normal_``, fan_in, gain of the activation: relu for relu/elu/gelu,
  leaky_relu with slope 0.01, tanh, sigmoid, linear for identity), ``xavier``
  (``xavier_normal_``) and ``orthogonal`` (``orthogonal_``) set the weight of every
  Linear, conv and transposed conv and zero its bias; norm layers get weight 1, bias 0.
  ``gpt2`` (``transformer.gpt2_init``): every Linear, conv and transposed conv weight,
  embedding and position embedding ~ N(0, 0.02), biases 0, norms 1/0, and GPT-2's scaled
  residual init: the blocks' residual output projections (attention's and the MLP's
  ``proj``) multiplied by 1/sqrt(2 depth); ``gpt2_unscaled`` leaves out that scaling. The
  other nets take both (they have no residual projections to scale).

Classifier input sizes are computed analytically from ``input_shape`` (no dry forward),
so building consumes the global torch RNG only through the layers' own initialisation
and is deterministic given ``torch.manual_seed``; building under ``torch.device("meta")``
allocates nothing (``trajreg.train.size`` sizes a run that way). Inputs a model cannot
take raise ``ConfigError`` with a message starting ``"model.name: "``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from trajreg.errors import ConfigError
from trajreg.train.checks import choice, positive, quote
from trajreg.train.transformer import GPT, POSITIONS, ViT, gpt2_init
from trajreg.train.transformer import NORMS as TRANSFORMER_NORMS

ACTIVATION_LAYERS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}

# The module types each technique adds; tests strip them to compare forward graphs.
TECHNIQUE_MODULES: dict[str, tuple[type[nn.Module], ...]] = {
    "norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm),
    "activation": (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity),
    "dropout": (nn.Dropout,),
}

VARIANTS: dict[str, tuple[str, ...]] = {  # the first is the family's default
    "vgg": ("vgg11", "vgg13", "vgg16", "vgg19"),
    "resnet": ("resnet20", "resnet32", "resnet56", "resnet18", "resnet34"),
}

# ``width`` when the config leaves it unset: the mlp's hidden units, the cnn's first-block
# channels, the other conv nets' channel multiplier, the transformers' d_model.
DEFAULT_WIDTH: dict[str, float] = {"mlp": 64, "cnn": 16, "alexnet": 1.0, "vgg": 1.0,
                                   "resnet": 1.0, "unet": 1.0, "gpt": 64, "vit": 64}

TRANSFORMERS = ("gpt", "vit")  # built from trajreg.train.transformer's Block
# ModelConfig keys only the transformers read; other nets accept and ignore them, and
# their configs leave them out of ``RunConfig.to_dict`` at the defaults (run ids unchanged)
TRANSFORMER_KEYS = ("heads", "block_size", "norm_position", "qk_norm", "patch_size", "tie")

MAX_DEPTH = 1000  # the mlp's depth limit: deeper is a typo, and slow to even build


def group_count(c: int) -> int:
    """GroupNorm's group count for ``c`` channels: gcd(c, 8), which always divides c."""
    return math.gcd(c, 8)


# norm -> (layer for (N, C, H, W) conv features, layer for (N, C) features), each called
# with C; ``none`` maps to None and adds no module at all.
NORM_LAYERS: dict[str, tuple[Callable[[int], nn.Module], Callable[[int], nn.Module]] | None] = {
    "none": None,
    "batch": (nn.BatchNorm2d, nn.BatchNorm1d),
    "layer": (lambda c: nn.GroupNorm(1, c), nn.LayerNorm),
    "group": (lambda c: nn.GroupNorm(group_count(c), c),
              lambda c: nn.GroupNorm(group_count(c), c)),
}

_Gain = Literal["relu", "leaky_relu", "tanh", "sigmoid", "linear"]
_KAIMING_GAIN: dict[str, _Gain] = {"relu": "relu", "elu": "relu", "gelu": "relu",
                                   "leaky_relu": "leaky_relu", "tanh": "tanh",
                                   "sigmoid": "sigmoid", "identity": "linear"}


def _kaiming(weight: torch.Tensor, activation: str) -> None:
    gain = _KAIMING_GAIN[activation]
    a = 0.01 if gain == "leaky_relu" else 0.0
    nn.init.kaiming_normal_(weight, a=a, mode="fan_in", nonlinearity=gain)


# init scheme -> how it sets a weight, given the activation; ``default`` (None) keeps
# the model's own initialisation (PyTorch's; GPT-2's for gpt and vit). The gpt2 schemes
# are ``transformer.gpt2_init`` (embeddings and residual projections too, see GPT2_SCALED).
INIT_SCHEMES: dict[str, Callable[[torch.Tensor, str], object] | None] = {
    "default": None,
    "kaiming": _kaiming,
    "xavier": lambda weight, activation: nn.init.xavier_normal_(weight),
    "orthogonal": lambda weight, activation: nn.init.orthogonal_(weight),
    "gpt2": lambda weight, activation: nn.init.normal_(weight, 0.0, 0.02),
    "gpt2_unscaled": lambda weight, activation: nn.init.normal_(weight, 0.0, 0.02),
}
GPT2_SCALED = {"gpt2": True, "gpt2_unscaled": False}  # scheme -> scaled residual init


# ----------------------------------------------------------------------------- building blocks

def channels(base: int, width: float) -> int:
    """A layer's channel count: ``max(1, round(base * width))``."""
    return max(1, round(base * width))


def model_width(cfg: ModelConfig) -> float:
    """``cfg.width``, or the family's default (``DEFAULT_WIDTH``) when it is unset."""
    return DEFAULT_WIDTH[cfg.name] if cfg.width is None else cfg.width


def _act(name: str) -> nn.Module:
    return ACTIVATION_LAYERS[name]()


def _norm2d(kind: str, c: int) -> list[nn.Module]:
    """The norm layer for conv features with ``c`` channels: none adds no module."""
    layers = NORM_LAYERS[kind]
    return [] if layers is None else [layers[0](c)]


def _norm1d(kind: str, c: int) -> list[nn.Module]:
    """The norm layer for (N, c) features: none adds no module."""
    layers = NORM_LAYERS[kind]
    return [] if layers is None else [layers[1](c)]


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling, stride 2: ``F.max_pool2d(x, 2)``, except without autograd on the
    CPU, where it is the maximum of the four strided quarter-grids: the same values bit
    for bit (max is exact and both propagate NaN), 3-9x faster than max_pool2d's NCHW CPU
    kernel on the zoo's feature maps, where pooling was a quarter of a small CNN's forward
    pass. Loss evaluations (F_k, l_t(x*), the interpolation) are forward passes only;
    training keeps max_pool2d, whose indices its backward needs."""
    if (torch.is_grad_enabled() and x.requires_grad) or x.dim() != 4 \
            or x.device.type != "cpu":
        return F.max_pool2d(x, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    top = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
    return torch.maximum(top, torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))


torch.fx.wrap("max_pool_2x2")  # one call node when traced, as nn.MaxPool2d is one leaf


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d(2) computed by ``max_pool_2x2``."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


def _conv_block(c_in: int, c_out: int, k: int, activation: str, norm: str,
                stride: int = 1) -> list[nn.Module]:
    """conv(k x k, "same" padding) -> norm -> activation."""
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2),
            *_norm2d(norm, c_out), _act(activation)]


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"model.name: {name} needs image inputs (C, H, W), got shape "
                          f"{tuple(input_shape)}; use model.name: mlp for vector inputs")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


def _min_side(name: str, hw: tuple[int, int], side: int, why: str) -> None:
    if min(hw) < side:
        raise ConfigError(f"model.name: {name} needs images of side >= {side} ({why}), got "
                          f"{hw[0]}x{hw[1]}; set data.resize to {side} or more")


# ----------------------------------------------------------------------------- mlp and cnn

class MLP(nn.Module):
    """``depth`` linear layers; each hidden layer is Linear -> norm -> activation (-> dropout)."""

    def __init__(self, n_in: int, n_out: int, depth: int, width: int, activation: str,
                 norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = n_in
        for _ in range(depth - 1):
            layers += [nn.Linear(size, width), *_norm1d(norm, width), _act(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (conv -> norm -> activation, then 2x2 max pooling) and a linear
    classifier; ``width`` is the channel count of the first block."""

    def __init__(self, in_channels: int, hw: tuple[int, int], n_out: int, width: int,
                 activation: str, norm: str) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, width, 3, activation, norm), MaxPool2d(),
            *_conv_block(width, 2 * width, 3, activation, norm), MaxPool2d(),
        )
        self.classifier = nn.Linear(2 * width * (hw[0] // 4) * (hw[1] // 4), n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


# ----------------------------------------------------------------------------- alexnet and vgg

class AlexNet(nn.Module):
    """CIFAR-style AlexNet: five conv layers, three max-poolings, three Linear layers."""

    CONVS = ((64, 5), (192, 5), (384, 3), (256, 3), (256, 3))  # (base channels, kernel)
    POOL_AFTER = (0, 1, 4)
    FC = 1024  # base hidden size of the two hidden Linear layers

    def __init__(self, in_channels: int, hw: tuple[int, int], n_out: int, width: float,
                 activation: str, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = in_channels, hw
        for i, (base, k) in enumerate(self.CONVS):
            layers += _conv_block(c, channels(base, width), k, activation, norm)
            c = channels(base, width)
            if i in self.POOL_AFTER:
                layers.append(MaxPool2d())
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        hidden = channels(self.FC, width)
        head: list[nn.Module] = []
        size = c * h * w
        for _ in range(2):
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            head += [nn.Linear(size, hidden), _act(activation)]
            size = hidden
        head.append(nn.Linear(size, n_out))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG conv stack (conv3x3 -> norm -> activation, five max-poolings) and one Linear."""

    def __init__(self, variant: str, in_channels: int, hw: tuple[int, int], n_out: int,
                 width: float, activation: str, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = in_channels, hw
        for item in VGG_CONFIGS[variant]:
            if item == "M":
                layers.append(MaxPool2d())
                h, w = h // 2, w // 2
            else:
                layers += _conv_block(c, channels(int(item), width), 3, activation, norm)
                c = channels(int(item), width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


# ----------------------------------------------------------------------------- resnet

class SubsamplePad(nn.Module):
    """He et al.'s parameter-free "option A" shortcut: take every ``stride``-th pixel and
    zero-pad the new channels, split evenly before and after the old ones."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.before = (c_out - c_in) // 2
        self.after = c_out - c_in - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output's shape for an input of ``shape`` (``size.leaf_output_shapes``)."""
        n, c, h, w = shape
        return (n, c + self.before + self.after, -(-h // self.stride), -(-w // self.stride))


class BasicBlock(nn.Module):
    """activation(F(x) + shortcut(x)), F = conv3x3 -> norm -> activation -> conv3x3 -> norm.

    ``shortcut`` is ``"A"`` (``SubsamplePad`` where the shape changes) or ``"B"`` (1x1 conv
    -> norm where the shape changes); the identity otherwise. ``skip=False`` drops the
    shortcut: the block computes activation(F(x)) and holds no shortcut module.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str, norm: str,
                 skip: bool, shortcut: str) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            *_conv_block(c_in, c_out, 3, activation, norm, stride=stride),
            nn.Conv2d(c_out, c_out, 3, padding=1), *_norm2d(norm, c_out),
        )
        self.skip = skip
        self.shortcut: nn.Module | None = None
        if skip and (stride != 1 or c_in != c_out):
            if shortcut == "A":
                self.shortcut = SubsamplePad(c_in, c_out, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride),
                                              *_norm2d(norm, c_out))
        self.act = _act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.skip:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.act(out)


# variant -> (blocks per stage, base channels per stage, stem base channels, shortcut type)
RESNET_CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, str]] = {
    "resnet20": ((3, 3, 3), (16, 32, 64), 16, "A"),
    "resnet32": ((5, 5, 5), (16, 32, 64), 16, "A"),
    "resnet56": ((9, 9, 9), (16, 32, 64), 16, "A"),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), 64, "B"),
    "resnet34": ((3, 4, 6, 3), (64, 128, 256, 512), 64, "B"),
}


class ResNet(nn.Module):
    """3x3 stem (conv -> norm -> activation), stages of BasicBlocks (stride 2 at the start of
    every stage but the first), global average pooling, one Linear."""

    def __init__(self, variant: str, in_channels: int, n_out: int, width: float,
                 activation: str, norm: str, skip: bool) -> None:
        super().__init__()
        blocks, bases, stem, shortcut = RESNET_CONFIGS[variant]
        c = channels(stem, width)
        self.stem = nn.Sequential(*_conv_block(in_channels, c, 3, activation, norm))
        stages: list[nn.Module] = []
        for i, (n, base) in enumerate(zip(blocks, bases, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BasicBlock(c, channels(base, width), stride, activation, norm,
                                         skip, shortcut))
                c = channels(base, width)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))


# ----------------------------------------------------------------------------- unet

def _double_conv(c_in: int, c_out: int, activation: str, norm: str) -> nn.Sequential:
    return nn.Sequential(*_conv_block(c_in, c_out, 3, activation, norm),
                         *_conv_block(c_out, c_out, 3, activation, norm))


class UNet(nn.Module):
    """Encoder-decoder with ``LEVELS`` downsamplings and encoder-to-decoder skips.

    ``skip=False`` concatenates zeros of the encoder features' shape in their place.
    """

    BASE = 16
    LEVELS = 3

    def __init__(self, in_channels: int, n_out: int, width: float, activation: str,
                 norm: str, skip: bool) -> None:
        super().__init__()
        cs = [channels(self.BASE * 2**i, width) for i in range(self.LEVELS + 1)]
        self.skip = skip
        self.down = nn.ModuleList()
        c = in_channels
        for c_level in cs[:-1]:
            self.down.append(_double_conv(c, c_level, activation, norm))
            c = c_level
        self.pool = MaxPool2d()
        self.bottleneck = _double_conv(c, cs[-1], activation, norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(self.LEVELS)):
            self.up.append(nn.ConvTranspose2d(cs[i + 1], cs[i], 2, stride=2))
            self.dec.append(_double_conv(2 * cs[i], cs[i], activation, norm))
        self.head = nn.Conv2d(cs[0], n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for down in self.down:
            x = down(x)
            features.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, feat in zip(self.up, self.dec, reversed(features), strict=True):
            x = up(x)
            if not self.skip:
                feat = torch.zeros_like(feat)
            x = dec(torch.cat([x, feat], 1))
        return self.head(x)


# ----------------------------------------------------------------------------- registry

def _variant(cfg: ModelConfig) -> str:
    """``cfg.variant``, or the family's default (the first of ``VARIANTS[cfg.name]``)."""
    return cfg.variant if cfg.variant is not None else VARIANTS[cfg.name][0]


def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), n_classes, cfg.depth, int(model_width(cfg)),
               cfg.activation, cfg.norm, cfg.dropout)


def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    c, h, w = _image_shape("cnn", input_shape)
    _min_side("cnn", (h, w), 4, "2 max-poolings")
    return SmallCNN(c, (h, w), n_classes, channels(1, model_width(cfg)), cfg.activation,
                    cfg.norm)


def _alexnet(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    c, h, w = _image_shape("alexnet", input_shape)
    _min_side("alexnet", (h, w), 8, "3 max-poolings")
    return AlexNet(c, (h, w), n_classes, model_width(cfg), cfg.activation, cfg.norm,
                   cfg.dropout)


def _vgg(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    c, h, w = _image_shape("vgg", input_shape)
    _min_side("vgg", (h, w), 32, "5 max-poolings")
    return VGG(_variant(cfg), c, (h, w), n_classes, model_width(cfg), cfg.activation,
               cfg.norm)


def _resnet(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    c, _, _ = _image_shape("resnet", input_shape)
    return ResNet(_variant(cfg), c, n_classes, model_width(cfg), cfg.activation, cfg.norm,
                  cfg.skip)


def _unet(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    c, h, w = _image_shape("unet", input_shape)
    m = 2**UNet.LEVELS
    if h % m or w % m:
        side = max(m, -(-max(h, w) // m) * m)
        raise ConfigError(f"model.name: unet needs images whose height and width are "
                          f"multiples of {m} ({UNet.LEVELS} downsamplings), got {h}x{w}; "
                          f"set data.resize to e.g. {side}")
    return UNet(c, n_classes, model_width(cfg), cfg.activation, cfg.norm, cfg.skip)


def _gpt(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if len(input_shape) != 1:
        raise ConfigError(f"model.name: gpt needs token sequences (T,), got input shape "
                          f"{tuple(input_shape)}; use a language data set")
    if input_shape[0] > cfg.block_size:
        raise ConfigError(f"model.block_size: {cfg.block_size} is shorter than the data's "
                          f"sequence length {input_shape[0]}; set model.block_size to "
                          f"{input_shape[0]} or more")
    return GPT(n_classes, cfg.block_size, int(model_width(cfg)), cfg.depth, cfg.heads,
               cfg.dropout, cfg.norm, cfg.norm_position, cfg.skip, cfg.qk_norm, cfg.tie)


def _vit(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    c, h, w = _image_shape("vit", input_shape)
    p = cfg.patch_size
    if h % p or w % p:
        raise ConfigError(f"model.patch_size: {p} does not divide the images' height and "
                          f"width {h}x{w}; choose a divisor of both or set data.resize")
    return ViT(c, (h, w), p, n_classes, int(model_width(cfg)), cfg.depth, cfg.heads,
               cfg.dropout, cfg.norm, cfg.norm_position, cfg.skip, cfg.qk_norm)


MODELS: dict[str, Callable[[ModelConfig, tuple[int, ...], int], nn.Module]] = {
    "mlp": _mlp, "cnn": _cnn, "alexnet": _alexnet, "vgg": _vgg, "resnet": _resnet,
    "unet": _unet, "gpt": _gpt, "vit": _vit,
}


@dataclass
class ModelConfig:
    """The ``model`` section of a run config (``config.RunConfig``), validated against
    ``MODELS``, ``VARIANTS`` and the layer registries."""

    name: str = "mlp"
    variant: str | None = None  # vgg11/13/16/19, resnet20/32/56/18/34; None: the first
    # mlp: number of linear layers; gpt, vit: number of transformer blocks (both at most
    # models.MAX_DEPTH)
    depth: int = 6
    # None: the family's default (models.DEFAULT_WIDTH), set by load_config. mlp: hidden
    # units (64); cnn: its first block's channels (16; the second has twice as many);
    # alexnet, vgg, resnet, unet: a multiplier on every layer's channels (1.0: standard);
    # gpt, vit: d_model (64)
    width: float | None = None
    activation: str = "relu"  # not gpt, vit (their MLPs use GELU)
    norm: str = "none"  # gpt, vit: none, layer or rms
    skip: bool = True  # resnet, unet, gpt, vit: the skip (residual) connections
    dropout: float = 0.0  # mlp, alexnet, gpt, vit
    init: str = "default"  # default: PyTorch's own; GPT-2's (scaled) for gpt, vit
    # gpt and vit only (TRANSFORMER_KEYS; the other nets ignore them)
    heads: int = 4  # attention heads; must divide the width
    block_size: int = 64  # gpt: the longest sequence (positions embedded)
    norm_position: str = "pre"  # pre or post: where a block's norms sit
    qk_norm: bool = False  # normalise each head's queries and keys (needs a norm)
    patch_size: int = 4  # vit: patch side; must divide the images' height and width
    tie: bool = True  # gpt: the output head shares the token embedding

    def validate(self) -> None:
        choice("model.name", self.name, tuple(MODELS))
        if self.variant is not None:
            if self.name not in VARIANTS:
                raise ConfigError(f"model.variant: {self.name} has no variants (only "
                                  f"{', '.join(VARIANTS)} have), got {quote(self.variant)}")
            choice("model.variant", self.variant, VARIANTS[self.name])
        positive("model.depth", self.depth)
        if self.depth > MAX_DEPTH:
            raise ConfigError(f"model.depth: must be <= {MAX_DEPTH}, got {quote(self.depth)}")
        transformer = self.name in TRANSFORMERS
        if self.width is not None:
            positive("model.width", self.width)
            if (self.name == "mlp" or transformer) and self.width != int(self.width):
                what = "the mlp's hidden units" if self.name == "mlp" else f"{self.name}'s d_model"
                raise ConfigError(f"model.width: {what} must be a whole number, got "
                                  f"{quote(self.width)}")
        choice("model.activation", self.activation, tuple(ACTIVATION_LAYERS))
        norms = tuple(TRANSFORMER_NORMS if transformer else NORM_LAYERS)
        if transformer and self.norm in NORM_LAYERS and self.norm not in norms:
            raise ConfigError(f"model.norm: {self.name} takes {', '.join(norms)} ({self.norm} "
                              f"is for the conv nets and the mlp), got {quote(self.norm)}")
        choice("model.norm", self.norm, norms)
        choice("model.init", self.init, tuple(INIT_SCHEMES))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {quote(self.dropout)}")
        positive("model.heads", self.heads)
        positive("model.block_size", self.block_size)
        positive("model.patch_size", self.patch_size)
        choice("model.norm_position", self.norm_position, POSITIONS)
        if transformer:
            width = int(DEFAULT_WIDTH[self.name] if self.width is None else self.width)
            if width % self.heads:
                raise ConfigError(f"model.heads: {self.heads} does not divide model.width "
                                  f"{width} (each head takes width / heads features)")
            if self.qk_norm and self.norm == "none":
                raise ConfigError("model.qk_norm: needs model.norm layer or rms (q and k are "
                                  "normalised with the blocks' norm type), got norm none")

    def to_dict(self) -> dict[str, object]:
        """The fields as a dict, without the transformer keys for the other nets where
        they are at their defaults (so their run ids predate those keys unchanged)."""
        out = dataclasses.asdict(self)
        if self.name not in TRANSFORMERS:
            for f in dataclasses.fields(self):
                if f.name in TRANSFORMER_KEYS and out[f.name] == f.default:
                    del out[f.name]
        return out

    def resolve(self) -> None:
        if self.width is None:
            self.width = DEFAULT_WIDTH[self.name]


def init_weights(model: nn.Module, scheme: str, activation: str = "relu") -> None:
    """Apply ``scheme`` (see the module docstring) in place; ``default`` does nothing."""
    set_weight = INIT_SCHEMES[scheme]
    if set_weight is None:
        return
    if scheme in GPT2_SCALED:
        gpt2_init(model, scaled=GPT2_SCALED[scheme])
        return
    weighted = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    norms = TECHNIQUE_MODULES["norm"]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, weighted):
                set_weight(m.weight, activation)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, norms) and getattr(m, "weight", None) is not None:
                nn.init.ones_(cast(torch.Tensor, m.weight))
                if getattr(m, "bias", None) is not None:  # RMSNorm has none
                    nn.init.zeros_(cast(torch.Tensor, m.bias))


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build ``cfg.name`` for the data set's input shape and classes, then apply
    ``cfg.init``. ``cfg`` is a validated ``ModelConfig``: only the input shape is checked
    here (``ConfigError``, ``"model.name: ..."``)."""
    model = MODELS[cfg.name](cfg, tuple(input_shape), n_classes)
    init_weights(model, cfg.init, cfg.activation)
    return model


def n_params(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
