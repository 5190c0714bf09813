"""The reference training loop: one short function, top to bottom.

Everything random is derived from the run seed, so a run can be replayed exactly:
the model init from (seed, 0), each epoch's data order from (seed, 1, epoch) (a data
set sampled by windows: step t's window starts from (seed, 1, epoch, t)) and each
step's dropout masks from (seed, 2, step), which also lets the loss of step t's
minibatch be re-evaluated at another point x with the very same masks.

The loss is the task's (``OBJECTIVES``, chosen once per data set): cross-entropy over
the classes, per pixel for segmentation, per non-ignored token position for language
(logits ``(B, T, V)``, targets ``IGNORE_INDEX`` where nothing is predicted), in nats.

With ``train.accumulate`` k > 1 a step's minibatch is k contiguous micro-batches, each
forward and backward on its own (its loss divided by k, so the summed gradient is the
whole minibatch's mean) with its own random state (seed, 2, step, j); l_t is the mean of
the k micro-batch losses (``minibatch_loss``), each evaluated on its own micro-batch, so
batch norm sees the micro-batch statistics training saw. ``train.grad_clip`` clips the
global gradient norm after the last backward and before ``optimizer.step``, so the
recorder (optimizer step hooks) sees the clipped gradient and the clipped update.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from trajreg.errors import UserError
from trajreg.train.data import IGNORE_INDEX, LANGUAGE, SEGMENTATION, WINDOWS, Dataset
from trajreg.train.metrics import accuracy, confusion_matrix, mean_iou
from trajreg.train.models import build_model
from trajreg.train.optim import build_optimizer, build_scheduler, parameter_groups
from trajreg.train.size import EVAL_CHUNK, EVAL_TOKENS, check_run_size

if TYPE_CHECKING:
    from trajreg.train.config import RunConfig

Scheduler = torch.optim.lr_scheduler.LRScheduler


def derive_seed(*key: int) -> int:
    """A 63-bit seed derived from a tuple of non-negative integers."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> 1)


def steps_per_epoch(cfg: RunConfig, data: Dataset) -> int:
    return data.epoch_examples // cfg.data.batch_size  # last partial batch dropped


def total_steps(cfg: RunConfig, data: Dataset) -> int:
    return cfg.train.epochs * steps_per_epoch(cfg, data)


def batches(cfg: RunConfig, data: Dataset) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(step, epoch, indices into ``x_train``) for every optimizer step of the run, in
    order: a permutation of the examples each epoch, or (``data.sampling`` windows)
    ``batch_size`` random window starts each step, drawn with replacement from a
    generator of the step's own, so any step's windows follow from the seed alone."""
    n, bs = len(data.x_train), cfg.data.batch_size
    per_epoch = steps_per_epoch(cfg, data)
    step = 0
    for epoch in range(1, cfg.train.epochs + 1):
        if data.sampling == WINDOWS:
            for _ in range(per_epoch):
                g = torch.Generator().manual_seed(derive_seed(cfg.seed, 1, epoch, step))
                yield step, epoch, torch.randint(n, (bs,), generator=g)
                step += 1
            continue
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, 1, epoch))
        order = torch.randperm(n, generator=g)
        for i in range(per_epoch):
            yield step, epoch, order[i * bs : (i + 1) * bs]
            step += 1


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction=reduction)


def _token_cross_entropy(logits: torch.Tensor, y: torch.Tensor,
                         reduction: str) -> torch.Tensor:
    """Mean (or sum) over the positions whose target is not ``IGNORE_INDEX``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


def _confusion(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> np.ndarray:
    return confusion_matrix(logits.argmax(1), y, n_classes)


def _correct_tokens(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> int:
    # a V x V confusion matrix per position would be most of the evaluation's cost;
    # IGNORE_INDEX never equals a prediction
    return int((logits.argmax(-1) == y).sum())


def _classification_metrics(loss: float, confusion: Any, counted: int) -> dict[str, float]:
    return {"loss": loss, "accuracy": accuracy(confusion)}


def _segmentation_metrics(loss: float, confusion: Any, counted: int) -> dict[str, float]:
    return {"loss": loss, "accuracy": accuracy(confusion), "mean_iou": mean_iou(confusion)}


def _language_metrics(loss: float, correct: Any, counted: int) -> dict[str, float]:
    """Loss in nats, bits per token (per character for text), next-token accuracy."""
    return {"loss": loss, "bpc": loss / math.log(2),
            "accuracy": correct / counted if counted else math.nan}


class Objective(NamedTuple):
    """A task's loss of (logits, targets, reduction), the targets its mean is over, a
    forward chunk's score (added over chunks) and the metrics of (loss, score, count)."""

    loss: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]
    counted: Callable[[torch.Tensor], int]
    score: Callable[[torch.Tensor, torch.Tensor, int], Any]
    metrics: Callable[[float, Any, int], dict[str, float]]
    chunk_tokens: bool = False  # evaluation chunks sized by positions (sequences)


OBJECTIVES = {
    "classification": Objective(_cross_entropy, torch.Tensor.numel, _confusion,
                                _classification_metrics),
    SEGMENTATION: Objective(_cross_entropy, torch.Tensor.numel, _confusion,
                            _segmentation_metrics),
    LANGUAGE: Objective(_token_cross_entropy, lambda y: int((y != IGNORE_INDEX).sum()),
                        _correct_tokens, _language_metrics, chunk_tokens=True),
}


def objective(data: Dataset) -> Objective:
    return OBJECTIVES[getattr(data, "task", "classification")]


def micro_batches(cfg: RunConfig, idx: torch.Tensor) -> list[torch.Tensor]:
    """A step's minibatch as its ``train.accumulate`` contiguous micro-batches."""
    k = cfg.train.accumulate
    n = len(idx) // k  # data.batch_size is divisible by accumulate (RunConfig.validate)
    return [idx[j * n : (j + 1) * n] for j in range(k)]


def step_seed(cfg: RunConfig, step: int, micro: int = 0) -> int:
    """The random state of step ``step``'s micro-batch ``micro``: (seed, 2, step), as
    before accumulation existed, when a step is one batch; (seed, 2, step, micro) else."""
    if cfg.train.accumulate == 1:
        return derive_seed(cfg.seed, 2, step)
    return derive_seed(cfg.seed, 2, step, micro)


def mean_loss(losses: Sequence[Any]) -> Any:
    """The step loss of its micro-batch losses (floats, or tensors: a float64 tensor):
    summed in order in float64, then divided by their count; one loss is itself. The
    same float64 operations either way, so a logged value (floats) and a recomputed one
    (tensors) agree bit for bit."""
    if len(losses) == 1:
        return losses[0]
    total = losses[0] if isinstance(losses[0], float) else losses[0].double()
    for loss in losses[1:]:
        total = total + (loss if isinstance(loss, float) else loss.double())
    return total / len(losses)


def microbatch_loss(cfg: RunConfig, model: torch.nn.Module, data: Dataset, idx: torch.Tensor,
                    step: int, micro: int = 0) -> torch.Tensor:
    """The loss on the micro-batch ``idx`` of step ``step``: train mode, the micro-batch's
    own random state (``step_seed``)."""
    device = cfg.train.device
    xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)
    loss = objective(data).loss
    # the default generators directly: torch.manual_seed also walks every
    # accelerator backend and cost ~100 us a step, more than a small model's step
    seed = step_seed(cfg, step, micro)
    torch.default_generator.manual_seed(seed)
    if xb.is_cuda:
        torch.cuda.manual_seed(seed)
    if not model.training:  # train() walks every module: a tenth of a small CNN's forward
        model.train()
    return loss(model(xb), yb, "mean")


def minibatch_loss(cfg: RunConfig, model: torch.nn.Module, data: Dataset, idx: torch.Tensor,
                   step: int) -> torch.Tensor:
    """l_t(x): step t's minibatch ``idx``, train mode, step t's random state; with
    ``train.accumulate`` > 1 the mean of its micro-batches' losses (``mean_loss``, float64),
    each on its own micro-batch with its own random state."""
    parts = micro_batches(cfg, idx)
    if len(parts) == 1:
        return microbatch_loss(cfg, model, data, idx, step)
    return mean_loss([microbatch_loss(cfg, model, data, part, step, j)
                      for j, part in enumerate(parts)])


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block (batch norm reads its running statistics
    and updates none), in the mode it had before after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def eval_chunk(data: Dataset) -> int:
    """Examples per evaluation forward: ``EVAL_CHUNK``, or for sequences as many as hold
    about ``EVAL_TOKENS`` positions (a model's per-position activations grow with T)."""
    if not objective(data).chunk_tokens:
        return EVAL_CHUNK
    return max(1, EVAL_TOKENS // data.x_train.shape[1])


class Evaluation(NamedTuple):
    loss: float  # mean over the counted targets, nats
    score: Any  # the objective's score summed over chunks (None without n_classes)
    counted: int  # the targets the mean is over


@torch.no_grad()
def _eval(cfg: RunConfig, model: torch.nn.Module, data: Dataset, x: torch.Tensor,
          y: torch.Tensor, n_classes: int) -> Evaluation:
    """Mean loss (per sample, per pixel for segmentation, per counted token for
    language) in eval mode, so no BN statistics are updated; with ``n_classes``, also
    the task's score (a confusion matrix; the correct tokens for language)."""
    total, score = 0.0, None
    loss_of, counted, score_of = objective(data)[:3]
    chunk = eval_chunk(data)
    with eval_mode(model):
        for i in range(0, len(x), chunk):
            xb = x[i : i + chunk].to(cfg.train.device)
            yb = y[i : i + chunk].to(cfg.train.device)
            logits = model(xb)
            total += loss_of(logits, yb, "sum").item()
            if n_classes:
                part = score_of(logits, yb, n_classes)
                score = part if score is None else score + part
    n = counted(y)
    return Evaluation(total / n if n else math.nan, score, n)


def full_loss(cfg: RunConfig, model: torch.nn.Module, data: Dataset) -> float:
    """F(x): mean training-set loss in eval mode (windows: the fixed non-overlapping
    ones, ``Dataset.eval_train``)."""
    x, y = data.eval_train
    return _eval(cfg, model, data, x, y, 0).loss


def evaluate(cfg: RunConfig, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
    """Loss and accuracy (classification), pixel loss, pixel accuracy and mean IoU
    (segmentation), or token loss (nats), bits per token (``bpc``: bits per character
    for text) and next-token accuracy (language), on the training and test sets."""
    out = {}
    metrics = objective(data).metrics
    for split, (x, y) in (("train", data.eval_train), ("test", (data.x_test, data.y_test))):
        if len(x) == 0:
            continue
        ev = _eval(cfg, model, data, x, y, data.n_classes)
        out.update({f"{split}_{key}": value
                    for key, value in metrics(ev.loss, ev.score, ev.counted).items()})
    return out


def require_device(device: str) -> None:
    """A clear error, before any work, when the config asks for a device this machine
    lacks (torch's own is an AssertionError from deep inside)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {device} requested, but torch {torch.__version__} "
                        "sees no CUDA device on this machine; use train.device: cpu")


def deterministic(device: str) -> None:
    """On CUDA, ask for deterministic kernels, which replay needs to reproduce a run bit
    for bit (cuBLAS reads its workspace setting when CUDA starts, so this runs first).
    Ops without a deterministic kernel only warn: replay's own bitwise check then says
    whether the run was reproduced. CPU kernels are deterministic already."""
    if not str(device).startswith("cuda"):
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def build(cfg: RunConfig, data: Dataset) -> tuple[torch.nn.Module, torch.optim.Optimizer,
                                                  Scheduler]:
    """Model, optimizer and scheduler for a run, initialised from the run seed.

    First applies ``train.threads`` (``torch.set_num_threads``; None keeps torch's
    default) and refuses a run above the memory cap (``size.check_run_size``)."""
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    check_run_size(cfg, data.size, n_classes=data.n_classes)
    deterministic(cfg.train.device)
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = build_model(cfg.model, data.input_shape, data.n_classes).to(cfg.train.device)
    optimizer = build_optimizer(cfg.optim, parameter_groups(cfg.optim, model))
    scheduler = build_scheduler(cfg.optim, optimizer, total_steps(cfg, data),
                                steps_per_epoch(cfg, data))
    return model, optimizer, scheduler


@dataclass
class TrainLog:
    """What the loop saw, one entry per optimizer step taken (and per epoch)."""

    loss: list[float] = field(default_factory=list)  # l_t(x_t)
    loss_star: list[float] = field(default_factory=list)  # l_t(x*), with star_model only
    epoch: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    full_loss: list[float] = field(default_factory=list)  # F_0, F_1 ... after each epoch
    epoch_ends: list[int] = field(default_factory=list)  # steps done after each epoch
    diverged_step: int | None = None

    @property
    def steps(self) -> int:
        return len(self.loss)


def clip_gradients(cfg: RunConfig, optimizer: torch.optim.Optimizer) -> None:
    """``train.grad_clip``: scale the gradients of every parameter the optimizer updates
    so that their global norm is at most grad_clip (``torch.nn.utils.clip_grad_norm_``:
    under DDP after the ranks' gradients are averaged, under FSDP2 the norm of the
    sharded (DTensor) gradients, reduced over the ranks)."""
    if cfg.train.grad_clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)


def train(cfg: RunConfig, data: Dataset, model: torch.nn.Module,
          optimizer: torch.optim.Optimizer, scheduler: Scheduler, *, max_steps: int | None = None,
          star_model: torch.nn.Module | None = None, eval_full: bool = True,
          desc: str = "train", progress: bool | None = None,
          on_epoch: Callable[[int], None] | None = None,
          micro_loss: Callable[[torch.Tensor, int, int], tuple[torch.Tensor, float]] | None = None,
          evaluate: Callable[[], float] | None = None) -> TrainLog:
    """Train ``model`` for ``cfg.train.epochs`` (or ``max_steps``) and log every step.

    With ``star_model`` (a copy holding x*), each step's minibatch loss at x* is
    logged too, with the step's own batch, mode and random state. A non-finite loss
    stops training before the step is taken, with ``diverged_step`` set.
    ``progress``: show a tqdm bar (None: only on a terminal); ``on_epoch(epoch)`` is
    called after each epoch (studies report progress through it). ``micro_loss(idx,
    step, micro)`` (the loss of a micro-batch to differentiate, and its value that
    ``mean_loss`` makes the logged l_t of) and ``evaluate()`` (F_k) replace the
    single-process ones: a distributed rank differentiates its part of the micro-batch
    and logs the global micro-batch's loss (``trajreg.distributed.train``).
    """
    if micro_loss is None:
        def micro_loss(idx: torch.Tensor, step: int, micro: int) -> tuple[torch.Tensor, float]:
            loss = microbatch_loss(cfg, model, data, idx, step, micro)
            return loss, loss.item()
    if evaluate is None:
        def evaluate() -> float:
            return full_loss(cfg, model, data)
    log = TrainLog()
    if eval_full:
        log.full_loss.append(evaluate())
    stop = total_steps(cfg, data) if max_steps is None else max_steps
    k = cfg.train.accumulate
    bar = tqdm(total=stop, desc=desc, disable=None if progress is None else not progress,
               leave=False)
    for step, epoch, idx in batches(cfg, data):
        if step >= stop:
            break
        values: list[float] = []
        star: list[torch.Tensor] = []
        for j, part in enumerate(micro_batches(cfg, idx)):
            loss, value = micro_loss(part, step, j)
            values.append(value)
            if not math.isfinite(value):
                break  # the step's loss is not finite whatever the others are
            if star_model is not None:
                with torch.no_grad():
                    star.append(microbatch_loss(cfg, star_model, data, part, step, j))
            if j == 0:
                optimizer.zero_grad(set_to_none=True)
            (loss if k == 1 else loss / k).backward()  # the sum over j: the minibatch mean
        value = mean_loss(values)
        if not np.isfinite(value):
            log.diverged_step = step
            break
        if star_model is not None:
            log.loss_star.append(mean_loss(star).item())
        log.loss.append(value)
        log.epoch.append(epoch)
        log.lr.append(float(optimizer.param_groups[0]["lr"]))
        clip_gradients(cfg, optimizer)
        optimizer.step()
        scheduler.step()
        bar.update(1)
        if (step + 1) % steps_per_epoch(cfg, data) == 0:
            log.epoch_ends.append(step + 1)
            if eval_full:
                log.full_loss.append(evaluate())
                bar.set_postfix(epoch=epoch, loss=f"{log.full_loss[-1]:.4g}")
                if not np.isfinite(log.full_loss[-1]):  # F_k diverged: stop here too
                    log.diverged_step = step + 1
                    break
            if on_epoch is not None:
                on_epoch(epoch)
    bar.close()
    return log
