"""A hand-written loop on a linear regression, measured by ``RegularitySession``: the
plain-loop tests of the integrations, the sample mode and the geometry share it."""

from __future__ import annotations

from collections.abc import Callable

import torch


def mse(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def linear_problem(lr: float) -> tuple[torch.nn.Linear, torch.optim.SGD, tuple]:
    """A 4 -> 1 linear model, plain SGD at ``lr``, and one fixed batch of 64 (seed 0)."""
    torch.manual_seed(0)
    batch = (torch.randn(64, 4), torch.randn(64, 1))
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=lr), batch


def train_with_session(session, model: torch.nn.Module, opt: torch.optim.Optimizer,
                       batch: tuple, steps: int, *, blow_up_at: int | None = None,
                       after_step: Callable[[int], None] | None = None) -> None:
    """``steps`` SGD steps on ``batch``, an epoch every 4 steps, the session hooked in as a
    user would; from step ``blow_up_at`` on the learning rate is 1e30 (the loss diverges)."""
    def blow_up() -> None:
        for g in opt.param_groups:
            g["lr"] = 1e30

    def between(step: int) -> None:
        if after_step is not None:
            after_step(step)
        if step % 4 == 3:
            session.end_epoch()
        if step + 1 == blow_up_at:
            blow_up()

    session.start(model, opt)
    if blow_up_at == 0:
        blow_up()
    plain_steps(session, model, opt, [batch], steps, between)


def mlp_problem(seed: int = 0, n: int = 64, scale: float = 1.0):
    """A 4-8-1 tanh MLP, plain SGD at 0.05, and 40 batches of ``n`` (targets times
    ``scale``), seeded."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    batches = [(torch.randn(n, 4), scale * torch.randn(n, 1)) for _ in range(40)]
    return model, torch.optim.SGD(model.parameters(), lr=0.05), batches


def counted_steps(optimizer: torch.optim.Optimizer) -> list[int]:
    """A one-item list counting the optimizer's real steps."""
    count = [0]
    optimizer.register_step_post_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def plain_steps(session, model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list,
                steps: int, after_step: Callable[[int], None] | None = None) -> None:
    """``steps`` plain steps of one micro-batch each (batches in turn), the session told
    of each as a user's loop tells it; ``after_step(i)`` after step i."""
    for i in range(steps):
        batch = batches[i % len(batches)]
        session.before_batch()
        loss = mse(model, batch)
        session.after_batch(batch, loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(i)
