"""The torch.fx graph of a net with and without one switch's own nodes, for the tests
that a switch changes nothing else (test_models.py, test_transformer.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx
from torch import nn

Own = Callable[[fx.Node, dict[str, nn.Module]], bool]


def graph_without(model: nn.Module, own: Own) -> tuple[list, list]:
    """(all nodes, nodes for which ``own`` is false) as (op, kind) pairs; a module's kind
    is its type and settings, so a resized layer would show."""
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    full, stripped = [], []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = modules[node.target]
            kind = f"{type(mod).__name__}({mod.extra_repr()})"
        elif node.op in ("call_function", "call_method"):
            kind = getattr(node.target, "__name__", str(node.target))
        else:
            kind = node.op
        full.append((node.op, kind))
        if not own(node, modules):
            stripped.append((node.op, kind))
    return full, stripped
