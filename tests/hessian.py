"""The brute force the curvature tests measure against: the full Hessian of a loss in a
model's parameters (``torch.autograd.functional.hessian``; small models only)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def full_hessian(model: torch.nn.Module, flat: np.ndarray | torch.Tensor,
                 loss_of: Callable[[Callable[..., torch.Tensor]], torch.Tensor]) -> np.ndarray:
    """The symmetrized Hessian at the flat point ``flat`` (the parameters in
    ``named_parameters`` order) of ``loss_of(forward)``, ``forward(*inputs)`` the model
    called with those parameters (``torch.func.functional_call``)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def f(x: torch.Tensor) -> torch.Tensor:
        params, at = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = math.prod(shape)
            params[name] = x[at : at + n].view(shape).float()
            at += n
        return loss_of(lambda *a: torch.func.functional_call(model, params, a))

    x0 = torch.as_tensor(np.asarray(flat, dtype=np.float64))
    H = torch.autograd.functional.hessian(f, x0)
    return ((H + H.T) / 2).numpy()
