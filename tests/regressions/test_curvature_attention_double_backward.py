"""record.curvature raised on every transformer whose attention has no dropout
("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented"): the fused attention kernels have no double backward, and on the CPU
``F.scaled_dot_product_attention`` takes the flash kernel unless dropout is on (trajreg's
gpt at dropout 0, a Hugging Face model with attention_dropout 0). The measurement now runs
attention through its math kernel; lambda_max is the top eigenvalue of the full
Hessian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trajreg.record.curvature import CurvatureRow, measure_step
from trajreg.train.models import ModelConfig, build_model

V, T = 5, 4


def test_a_gpt_without_dropout_has_a_hessian() -> None:
    cfg = ModelConfig(name="gpt", width=4, depth=1, heads=1, block_size=T, dropout=0.0)
    cfg.validate()
    torch.manual_seed(0)
    model = build_model(cfg, (T,), V).train()
    x = torch.randint(V, (3, T), generator=torch.Generator().manual_seed(1))

    def loss_of(out: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out.reshape(-1, V), x.reshape(-1))

    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    d = sum(p.numel() for p in params)
    row = CurvatureRow(0, 0.1, np.zeros(d), np.ones(d), None, {"optimizer": "SGD"})
    c = measure_step(params, lambda: loss_of(model(x)), row, iterations=d, tol=1e-8,
                     seed=0, critical=False)

    def f(flat: torch.Tensor) -> torch.Tensor:
        at, values = 0, {}
        for name, p in zip(names, params, strict=True):
            values[name] = flat[at : at + p.numel()].view(p.shape).float()
            at += p.numel()
        return loss_of(torch.func.functional_call(model, values, (x,)))

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):  # the brute force needs a second derivative too
        H = torch.autograd.functional.hessian(
            f, torch.cat([p.detach().reshape(-1) for p in params]).double())
    exact = float(torch.linalg.eigvalsh((H + H.T) / 2)[-1])
    assert math.isfinite(c.lambda_max) and c.lambda_max == pytest.approx(exact, rel=1e-4)
