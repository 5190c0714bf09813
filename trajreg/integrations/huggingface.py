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
(pass labels), as the Trainer requires anyway. Every optimizer step needs a learning
rate above 0 (eta_t divides the quantities): Hugging Face's warmups start at 0, which
is refused (a UserError) before that step is taken.

Data-parallel training (``torchrun --nproc_per_node N script.py``; the Trainer wraps
the model in DDP): every rank keeps its own micro-batches, rank 0 alone records the
trajectory and writes ``out``, and each step's loss is added over the ranks
(``trajreg.distributed.ranks``): their sum when the losses were normalised by the
global token count (``num_items_in_batch`` with ``average_tokens_across_devices``, the
default, under which the Trainer scales the loss by the number of processes), else
their mean. ``fsdp`` and ``deepspeed`` arguments are refused when the Trainer is
built (a UserError).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("trajreg.integrations.huggingface needs transformers: "
                      "pip install 'trajreg[huggingface]'") from None

from trajreg.errors import UserError
from trajreg.integrations.session import EVAL_BATCHES, LOSS_RTOL, RegularitySession
from trajreg.record.modes import RecordMode
from trajreg.run.summary import Summary
from trajreg.run.trackers import Tracker
from trajreg.train.config import CurvatureConfig


def check_args(args) -> None:
    """Refuse training arguments that shard the model (a UserError naming them and what
    to use instead): the callback measures single-process and DDP runs."""
    for name, what in (("fsdp", "FSDP"), ("deepspeed", "DeepSpeed")):
        value = getattr(args, name, None)
        if value:
            raise UserError(f"RegularityCallback does not measure Trainer runs with {what} "
                            f"({name}={value!r}): train with DDP (torchrun without "
                            "fsdp/deepspeed); FSDP2 runs are measured by the Lightning "
                            "callback (ModelParallelStrategy), by RegularitySession in your "
                            "own loop, and by trajreg run")


class RegularityCallback(TrainerCallback):
    """Record the training trajectory and write a trajreg run directory to ``out`` at the
    end of ``Trainer.train()``.

    The arguments are ``RegularitySession``'s (out, eps, tensorboard, trackers, figures,
    loss_threshold, timeout, mode, interpolation, steps, epoch_steps, eval_batches,
    loss_rtol, curvature): ``mode`` is the record mode, ``store`` (every x_t), ``sample``
    or ``sketch`` (one pass at any model size, docs/record-modes.md), by name or as a mode
    instance. ``steps`` defaults to the trainer's own number of optimizer steps.
    ``trackers`` (``"wandb"``, ``"mlflow"``) log into the runs that ``report_to``'s
    callbacks have open when training begins (``trajreg.run.trackers``).
    ``curvature``: the sharpness at a seeded sample of steps, e.g.
    ``curvature=dict(rate=0.01)`` (docs/integrations.md, "Curvature"; one process only).
    """

    def __init__(self, out: str | Path, *, eps: tuple[float, ...] = (0.0, 0.05),
                 tensorboard: bool = False, trackers: Sequence[Tracker] = (),
                 figures: bool = True, loss_threshold: float = 0.1, timeout: float = 1800.0,
                 mode: str | RecordMode = "store", interpolation: bool = True,
                 steps: int | None = None, epoch_steps: int | None = None,
                 eval_batches: int = EVAL_BATCHES, loss_rtol: float = LOSS_RTOL,
                 curvature: Mapping[str, Any] | CurvatureConfig | None = None) -> None:
        self.session = RegularitySession(out, source="huggingface", eps=eps,
                                         tensorboard=tensorboard, trackers=trackers,
                                         figures=figures,
                                         loss_threshold=loss_threshold, timeout=timeout,
                                         mode=mode, interpolation=interpolation,
                                         steps=steps, epoch_steps=epoch_steps,
                                         eval_batches=eval_batches, loss_rtol=loss_rtol,
                                         curvature=curvature)
        self.summary: Summary | None = None
        self._hooks: list = []
        self._inputs = None

    def on_init_end(self, args, state, control, **kwargs):
        check_args(args)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        check_args(args)
        self.model = model
        self._global_tokens = bool(getattr(args, "average_tokens_across_devices", False))
        self.session.start(model, optimizer, {
            "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "max_grad_norm": args.max_grad_norm, "seed": args.seed},
            steps=state.max_steps,
            api="RegularityCallback")
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
                if self._global_tokens:  # normalised by the tokens of every rank
                    self.session.rank_combine = "sum"
            self.session.after_batch(self._inputs, loss)
            self._inputs = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # eta_t divides a_t and s_t: a step at lr 0 (the first step of every Hugging Face
        # warmup) would fail the analysis only after training; say so before it is taken
        lr = self.session.optimizer.param_groups[self.session.lr_group]["lr"]
        if not lr > 0:
            self.session.abort()
            for h in self._hooks:
                h.remove()
            self._hooks = []
            raise UserError(
                f"RegularityCallback: optimizer step {state.global_step} has learning rate "
                f"{lr} (param group {self.session.lr_group}); trajreg needs eta_t > 0 at "
                "every step: Hugging Face's warmup (warmup_steps or warmup_ratio > 0) starts "
                "at 0, so start it above 0 with your own scheduler, Trainer(..., "
                "optimizers=(optimizer, LambdaLR(optimizer, lambda t: min(1, (t + 1) / "
                "(warmup + 1))))), or train without warmup")

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
