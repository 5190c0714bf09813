"""Hugging Face Trainer: ``Trainer(..., callbacks=[RegularityCallback(out=DIR)])``.

The Trainer does not hand its batches to callbacks, so the callback hooks the
model's forward pass: every forward in train mode with gradients on is one
micro-batch (its inputs and the ``loss`` the model returned are recorded; the
random state is kept just before it). Optimizer steps are seen through the
recorder's step hooks, so with ``gradient_accumulation_steps`` only real steps
count. When the Trainer passes ``num_items_in_batch`` the model's micro-batch
losses are already normalised by the whole step's token count and the step's loss
is their sum; otherwise their mean. See ``trajreg.integrations.session`` for what
is exact and what is not; x* is the end of training. Models must return a loss
(pass labels), as the Trainer requires anyway.
"""

from __future__ import annotations

from pathlib import Path

import torch

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("trajreg.integrations.huggingface needs transformers: "
                      "pip install 'trajreg[huggingface]'") from None

from trajreg.integrations.session import RegularitySession
from trajreg.run.summary import Summary


class RegularityCallback(TrainerCallback):
    """Record the training trajectory and write a trajreg run directory to ``out`` at the
    end of ``Trainer.train()``.

    The arguments are ``RegularitySession``'s (out, eps, tensorboard, figures,
    loss_threshold).
    """

    def __init__(self, out: str | Path, *, eps: tuple[float, ...] = (0.0, 0.05),
                 tensorboard: bool = False, figures: bool = True,
                 loss_threshold: float = 0.1) -> None:
        self.session = RegularitySession(out, source="huggingface", eps=eps,
                                         tensorboard=tensorboard, figures=figures,
                                         loss_threshold=loss_threshold)
        self.summary: Summary | None = None
        self._hooks: list = []
        self._inputs = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model = model
        self.session.start(model, optimizer, {
            "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "max_grad_norm": args.max_grad_norm, "seed": args.seed})
        self._hooks = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                       model.register_forward_hook(self._after, with_kwargs=True)]

    def _recording(self, module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _before(self, module, args, kwargs):
        if self._recording(module):
            self.session.before_batch()
            self._inputs = (args, dict(kwargs))

    def _after(self, module, args, kwargs, output):
        if self._recording(module) and self._inputs is not None:
            loss = output["loss"] if isinstance(output, dict) else getattr(output, "loss", None)
            if loss is None:
                raise ValueError("RegularityCallback: the model returned no loss; "
                                 "pass labels so that it computes one")
            if "num_items_in_batch" in self._inputs[1]:
                self.session.combine = "sum"
            self.session.after_batch(self._inputs, loss)
            self._inputs = None

    def on_epoch_end(self, args, state, control, **kwargs):
        self.session.end_epoch()

    def on_train_end(self, args, state, control, **kwargs):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.summary = self.session.finish(self.model, _loss_fn)


def _loss_fn(model, recorded) -> torch.Tensor:
    args, kwargs = recorded
    output = model(*args, **kwargs)
    return output["loss"] if isinstance(output, dict) else output.loss
