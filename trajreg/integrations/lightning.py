"""PyTorch Lightning: ``Trainer(callbacks=[RegularityCallback(out=DIR)])``.

Works with any LightningModule whose ``training_step`` returns its loss (a tensor
or a dict with ``"loss"``) and one optimizer. Only real optimizer steps count:
with ``accumulate_grad_batches=k`` the k micro-batches of a step form its
minibatch and l_t is their mean, matching the gradient Lightning applies. Gradient
clipping, schedulers and precision plugins act inside the step the recorder sees,
so x_t, D_t, a_t, s_t stay exact. See ``trajreg.integrations.session`` for what is
exact and what is not; x* is the end of the fit.

Distributed fits (``trajreg.distributed.ranks``): every rank keeps its own
micro-batches and each step's loss is the mean of the ranks' losses; rank 0 writes
``out``. Under DDP (``strategy="ddp"``, ...) rank 0 alone records the trajectory; under
FSDP2 (``ModelParallelStrategy`` whose ``configure_model`` applies ``fully_shard``, data
parallel only) every rank records its own shard. Refused at setup with a UserError:
FSDP with flat parameters (``strategy="fsdp"``) and DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package name
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]
    except ImportError:
        raise ImportError("trajreg.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'trajreg[lightning]'") from None

from trajreg.errors import UserError
from trajreg.integrations.session import EVAL_BATCHES, LOSS_RTOL, RegularitySession
from trajreg.record.modes import RecordMode
from trajreg.run.summary import Summary
from trajreg.run.trackers import Tracker, TrackerRuns
from trajreg.train.config import CurvatureConfig


def _loss_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output.get("loss")
    return None


# strategies whose ranks do not each hold every parameter: (what it is, what to use)
_SHARDED = {
    "FSDPStrategy": ("FSDP with flat parameters", "strategy='ddp', or FSDP2: "
                     "ModelParallelStrategy with fully_shard in configure_model"),
    "DeepSpeedStrategy": ("DeepSpeed (sharded optimizer and parameters)", "strategy='ddp'"),
}


def check_strategy(strategy: Any) -> None:
    """Refuse a strategy whose parameters the callback cannot record (a UserError naming
    it and what to use instead): it measures single-process, DDP and FSDP2 fits."""
    for cls in type(strategy).__mro__:
        if cls.__name__ in _SHARDED:
            what, instead = _SHARDED[cls.__name__]
            raise UserError(f"RegularityCallback cannot measure a fit with "
                            f"{type(strategy).__name__} ({what}): it needs every rank to hold "
                            f"every parameter; use {instead}")


def logger_runs(loggers: Sequence[Any], trackers: Sequence[Tracker]) -> TrackerRuns:
    """The runs of the trainer's WandbLogger and MLFlowLogger (found by class name:
    ``lightning`` and ``pytorch_lightning`` alike), for the trackers asked for."""
    found: dict[str, Any] = {}
    for logger in loggers:
        kinds = {cls.__name__ for cls in type(logger).__mro__}
        if "wandb" in trackers and "WandbLogger" in kinds:
            found.setdefault("wandb", logger.experiment)
        if "mlflow" in trackers and "MLFlowLogger" in kinds:
            found.setdefault("mlflow", (logger.experiment, logger.run_id))
    return TrackerRuns(**found)


class RegularityCallback(Callback):
    """Record the fit's trajectory and write a trajreg run directory to ``out`` at its end.

    The arguments are ``RegularitySession``'s (out, eps, tensorboard, trackers, figures,
    loss_threshold, timeout, mode, interpolation, steps, epoch_steps, eval_batches,
    loss_rtol, curvature): ``mode`` is the record mode, ``store`` (every x_t), ``sample``
    or ``sketch`` (one pass at any model size, docs/record-modes.md), by name or as a mode
    instance. ``steps`` defaults to the trainer's own number of optimizer steps.
    ``trackers`` (``"wandb"``, ``"mlflow"``) log into the trainer's ``WandbLogger`` or
    ``MLFlowLogger`` run when it has one (``trajreg.run.trackers``).
    ``curvature``: the sharpness at a seeded sample of steps, e.g.
    ``curvature=dict(rate=0.01)`` (docs/integrations.md, "Curvature"; one process or
    ``strategy="ddp"``, not FSDP2).
    """

    def __init__(self, out: str | Path, *, eps: tuple[float, ...] = (0.0, 0.05),
                 tensorboard: bool = False, trackers: Sequence[Tracker] = (),
                 figures: bool = True, loss_threshold: float = 0.1, timeout: float = 1800.0,
                 mode: str | RecordMode = "store", interpolation: bool = True,
                 steps: int | None = None, epoch_steps: int | None = None,
                 eval_batches: int = EVAL_BATCHES, loss_rtol: float = LOSS_RTOL,
                 curvature: Mapping[str, Any] | CurvatureConfig | None = None) -> None:
        super().__init__()
        self.session = RegularitySession(out, source="lightning", eps=eps,
                                         tensorboard=tensorboard, trackers=trackers,
                                         figures=figures,
                                         loss_threshold=loss_threshold, timeout=timeout,
                                         mode=mode, interpolation=interpolation,
                                         steps=steps, epoch_steps=epoch_steps,
                                         eval_batches=eval_batches, loss_rtol=loss_rtol,
                                         curvature=curvature)
        self.summary: Summary | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer.strategy)

    def on_fit_start(self, trainer, pl_module) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError("RegularityCallback measures runs with exactly one optimizer, "
                             f"this fit has {len(trainer.optimizers)}")
        if trainer.is_global_zero:  # a logger's run exists on rank 0 only
            self.session.runs = logger_runs(trainer.loggers, self.session.trackers)
        self.session.start(pl_module, trainer.optimizers[0], {
            "max_epochs": trainer.max_epochs,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "strategy": type(trainer.strategy).__name__,
        }, steps=trainer.estimated_stepping_batches, api="RegularityCallback")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.session.before_batch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = _loss_of(outputs)
        if loss is None:
            raise ValueError("RegularityCallback: training_step must return its loss "
                             "(a tensor or a dict with 'loss')")
        # Lightning hands on the loss divided by accumulate_grad_batches
        self.session.after_batch((batch, batch_idx), loss * trainer.accumulate_grad_batches)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.session.end_epoch()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.summary = self.session.finish(pl_module, self._loss_fn)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.session.abort()

    @staticmethod
    def _loss_fn(module, recorded) -> torch.Tensor:
        batch, batch_idx = recorded
        trainer = module._trainer
        module._trainer = None  # self.log() outside the fit loop: a no-op, not an error
        try:
            loss = _loss_of(module.training_step(batch, batch_idx))
            if loss is None:
                raise ValueError("RegularityCallback: training_step returned no loss")
            return loss
        finally:
            module._trainer = trainer
