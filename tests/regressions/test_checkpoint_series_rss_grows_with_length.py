"""Regression: measuring a checkpoint series kept every checkpoint open, memory-mapped,
so the pages read from each stayed mapped and the peak RSS grew with the series (1.0 GB
for 4 checkpoints of 64 MiB, 1.8 GB for 16; benchmarks/bench_checkpoints.py). Now at most
``_Points.OPEN`` are open at once, the first and x* among them."""

from __future__ import annotations

from pathlib import Path

import torch

from trajreg.checkpoints.measure import _Points
from trajreg.checkpoints.series import find_checkpoints


def test_at_most_four_checkpoints_are_open(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    for step in range(10):
        torch.save(model.state_dict(), tmp_path / f"step-{step}.pt")
    checkpoints = find_checkpoints([tmp_path])
    names = [n for n, _ in model.named_parameters()]
    points = _Points(checkpoints, names, [""] * len(checkpoints))
    points.keep.add(7)
    most = 0
    for k in range(10):  # the exact pass's order: x_k, x*, x_0, x_{k+1}
        for j in (k, 7, 0, min(k + 1, 9)):
            points.state(j)
            most = max(most, len(points._open))
        points.load(model, k)
    assert most <= _Points.OPEN
    assert {0, 7} <= set(points._open)
