"""The zoo's transformers: ``gpt`` (decoder-only language model) and ``vit`` (image
classifier), built from one ``Block``; ``models.py`` registers and documents them.

Every switch is a constructor argument that changes nothing else: ``norm`` (``NORMS``:
``none`` adds no module), ``position`` (pre or post: where each block's two norms sit),
``skip`` (the residual additions), ``qk_norm`` (a norm of the chosen type over each
head's queries and keys, shared by the heads: Wortsman et al. 2023) and ``dropout``
(``nn.Dropout`` modules only when > 0, plus the attention's dropout in train mode).
Attention is ``F.scaled_dot_product_attention`` (``is_causal`` for gpt), which runs on the
CPU and is deterministic there. Both nets initialise themselves with ``gpt2_init``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GPT2_STD = 0.02  # GPT-2's weight and embedding standard deviation
MLP_RATIO = 4  # the MLP's hidden size, in multiples of the width

# norm -> layer over the last dimension, called with its size; ``none`` adds no module
NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None,
    "layer": nn.LayerNorm,
    "rms": nn.RMSNorm,
}
POSITIONS = ("pre", "post")


def _norm(kind: str, size: int) -> nn.Module | None:
    make = NORMS[kind]
    return None if make is None else make(size)


def _dropout(p: float) -> nn.Module | None:
    return nn.Dropout(p) if p > 0 else None


class PositionEmbedding(nn.Module):
    """A learned embedding per position, added to the first ``T`` positions' features
    (``T`` = the input's length, at most ``n_positions``)."""

    def __init__(self, n_positions: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_positions, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[: x.shape[1]]

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output's shape for an input of ``shape`` (``size.leaf_output_shapes``)."""
        return shape


class Attention(nn.Module):
    """Multi-head self-attention: one Linear to q, k, v; (qk norm); scaled dot-product
    attention (causal or not); the output projection, a residual branch's last layer."""

    def __init__(self, width: int, heads: int, causal: bool, dropout: float, norm: str,
                 qk_norm: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.causal, self.p = causal, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = _norm(norm, self.head_dim) if qk_norm else None
        self.k_norm = _norm(norm, self.head_dim) if qk_norm else None
        self.proj = nn.Linear(width, width)
        self.proj.residual_output = True  # type: ignore[assignment]  # gpt2_init scales it
        self.drop = _dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, 3 * width) -> (3, B, heads, T, head_dim)
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0,
                                           is_causal=self.causal)
        y = self.proj(y.transpose(1, 2).flatten(2))
        return y if self.drop is None else self.drop(y)


class MLP(nn.Module):
    """Linear(width, 4 width) -> GELU -> Linear(4 width, width) (-> dropout)."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, MLP_RATIO * width)
        self.act = nn.GELU()
        self.proj = nn.Linear(MLP_RATIO * width, width)
        self.proj.residual_output = True  # type: ignore[assignment]  # gpt2_init scales it
        self.drop = _dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.act(self.fc(x)))
        return y if self.drop is None else self.drop(y)


class Block(nn.Module):
    """A transformer block, the one both nets use. Pre-norm: x + attn(norm1(x)), then
    x + mlp(norm2(x)); post-norm (Xiong et al. 2020's "Post-LN"): norm1(x + attn(x)), then
    norm2(x + mlp(x)). ``skip=False`` drops the additions (x is replaced by the branch)."""

    def __init__(self, width: int, heads: int, causal: bool, dropout: float, norm: str,
                 position: str, skip: bool, qk_norm: bool) -> None:
        super().__init__()
        self.pre, self.skip = position == "pre", skip
        self.norm1 = _norm(norm, width)
        self.attn = Attention(width, heads, causal, dropout, norm, qk_norm)
        self.norm2 = _norm(norm, width)
        self.mlp = MLP(width, dropout)

    def _sub(self, x: torch.Tensor, branch: nn.Module, norm: nn.Module | None) -> torch.Tensor:
        if self.pre and norm is not None:
            h = branch(norm(x))
        else:
            h = branch(x)
        x = x + h if self.skip else h
        if not self.pre and norm is not None:
            x = norm(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._sub(x, self.attn, self.norm1)
        return self._sub(x, self.mlp, self.norm2)


def _blocks(depth: int, width: int, heads: int, causal: bool, dropout: float, norm: str,
            position: str, skip: bool, qk_norm: bool) -> nn.Sequential:
    return nn.Sequential(*[Block(width, heads, causal, dropout, norm, position, skip, qk_norm)
                           for _ in range(depth)])


class GPT(nn.Module):
    """Decoder-only transformer: token ids (B, T) -> logits (B, T, vocab). Token and learned
    position embeddings (-> dropout), ``depth`` causal blocks, a final norm (the blocks'
    type, at either position), a bias-free head tied to the token embedding when ``tie``."""

    input_dtype = torch.long  # its inputs are token ids (size.meta_leaf_output_shapes)

    def __init__(self, vocab: int, block_size: int, width: int, depth: int, heads: int,
                 dropout: float, norm: str, position: str, skip: bool, qk_norm: bool,
                 tie: bool) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = PositionEmbedding(block_size, width)
        self.drop = _dropout(dropout)
        self.blocks = _blocks(depth, width, heads, True, dropout, norm, position, skip, qk_norm)
        self.norm = _norm(norm, width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tie:
            self.head.weight = self.tok.weight  # one Parameter
        gpt2_init(self)

    def shard_units(self) -> list[nn.Module]:
        """FSDP2's units (``trajreg.distributed.train.wrap``): one per block; the
        embeddings, the final norm and the (tied) head stay with the root."""
        return list(self.blocks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.pos(self.tok(idx))
        if self.drop is not None:
            x = self.drop(x)
        x = self.blocks(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.head(x)


class ViT(nn.Module):
    """Vision transformer: images (B, C, H, W) -> logits (B, n_classes). A strided
    ``patch`` x ``patch`` Conv2d embeds the patches, learned position embeddings
    (-> dropout), ``depth`` blocks (not causal), a final norm, mean pooling over the
    patches (no class token) and a Linear head."""

    def __init__(self, in_channels: int, hw: tuple[int, int], patch: int, n_classes: int,
                 width: int, depth: int, heads: int, dropout: float, norm: str, position: str,
                 skip: bool, qk_norm: bool) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.pos = PositionEmbedding((hw[0] // patch) * (hw[1] // patch), width)
        self.drop = _dropout(dropout)
        self.blocks = _blocks(depth, width, heads, False, dropout, norm, position, skip,
                              qk_norm)
        self.norm = _norm(norm, width)
        self.head = nn.Linear(width, n_classes)
        gpt2_init(self)

    def shard_units(self) -> list[nn.Module]:
        """FSDP2's units, as ``GPT.shard_units``: one per block."""
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos(self.patch(x).flatten(2).transpose(1, 2))  # (B, patches, width)
        if self.drop is not None:
            x = self.drop(x)
        x = self.blocks(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.head(x.mean(1))


def residual_outputs(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers that end a residual branch (attention's and the MLP's ``proj``)."""
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) and getattr(m, "residual_output", False)]


def gpt2_init(model: nn.Module, scaled: bool = True) -> None:
    """GPT-2's initialisation, in place, for any model: every Linear, conv and transposed
    conv weight, embedding and position embedding ~ N(0, 0.02), biases 0, norm weights 1;
    with ``scaled`` the residual branches' output projections are then multiplied by
    1/sqrt(2 n) for n of them per branch type (n blocks: 2n residual additions)."""
    weighted = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, PositionEmbedding)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, weighted):
                nn.init.normal_(m.weight, 0.0, GPT2_STD)
                bias = getattr(m, "bias", None)
                if bias is not None:
                    nn.init.zeros_(bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d,
                                nn.GroupNorm)):
                weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
                if isinstance(weight, torch.Tensor):  # absent without affine parameters
                    nn.init.ones_(weight)
                if isinstance(bias, torch.Tensor):  # RMSNorm has no bias
                    nn.init.zeros_(bias)
        outs = residual_outputs(model)
        if scaled and outs:
            scale = residual_scale(len(outs) // 2)
            for m in outs:
                m.weight.mul_(scale)


def residual_scale(depth: int) -> float:
    """GPT-2's factor on the residual output projections of ``depth`` blocks."""
    return 1.0 / math.sqrt(2 * depth)
