"""How much memory a run will need, told before anything is allocated.

``estimate_run_memory(cfg)`` sizes a run from its config alone: the data set from its
published size (``data.planned_size``), the model by building it on the ``meta`` device
(no storage) and propagating one training batch's shape through its ``torch.fx`` graph
(``leaf_output_shapes``; a meta-device forward where an op has no shape rule: the same
figures, but torch's meta kernels cost seconds to import on first use). ``check_run_size(cfg)``
refuses a run above the machine's cap (``machine.memory_cap``: 75% of the RAM, or of the
GPU's memory for cuda; ``train.max_memory_gb`` replaces it) with one ``ConfigError``
naming the key most to blame and the figures. Both take well under a second.

The estimate, in bytes (float32 throughout, P parameters):

* parameters: ``4 P (2 + k + 4)`` -- the weights, their gradients, ``k`` optimizer state
  tensors (``optim.optimizer_state_tensors``: 0 for sgd, 1 with momentum, 2 for adam),
  and four more copies the run makes (the final state, x*, the recorder's staging rows
  or replay's second model);
* activations: the larger of the training step, ``2 A`` with ``A`` the bytes of every
  leaf module's output (and the input) in a train-mode forward of one batch (what
  autograd keeps for the backward, plus the gradients flowing back through it), and
  the evaluation, ``2 M`` with ``M`` the largest leaf output for a chunk of 1024
  examples (no_grad: one layer's input and output live at a time);
* data: float32 inputs and int64 targets of the training and test sets after
  ``resize``, plus the float32 copy at the original size while resizing; for the token
  sets int64 token ids (``text``: one token stream, its windows are views of it).

A language task's model takes int64 token ids ``(B, T)``: its input counts 8 bytes a
position, and its evaluation forward holds about ``loop.EVAL_TOKENS`` positions.

On cpu all three share the host's RAM; on cuda the data stays in host memory and the
model's parameters and activations are held to the GPU's cap.

The run's length is sized too (``estimate_run_steps``), since a run keeps something
of every step: its training log and metrics table in memory (about ``STEP_BYTES`` a
step, refused by ``check_run_size`` above the same cap, naming ``train.epochs``) and
what its record mode writes (``check_run_disk``: refused when above the free space of
the output's file system). Every refusal and the warning for a long run
(``LONG_RUN_SECONDS``) give the steps and a lower bound on the time, at
``MIN_STEP_SECONDS`` a step (no trajreg step is faster: 186 us a step measured for a
one-unit MLP at batch size 1 on one CPU thread).
"""

from __future__ import annotations

import math
import operator
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from trajreg.errors import ConfigError
from trajreg.train.data import DATASETS, DataSize, planned_classes, planned_size
from trajreg.train.machine import fmt_bytes, memory_cap
from trajreg.train.models import MODELS, TECHNIQUE_MODULES
from trajreg.train.optim import optimizer_state_tensors

if TYPE_CHECKING:
    from trajreg.train.config import ModelConfig, RunConfig

RUN_COPIES = 4  # copies of the parameters a run makes besides weights, grads, optimizer
EVAL_CHUNK = 1024  # examples per evaluation forward (loop.eval_chunk)
EVAL_TOKENS = 1 << 15  # a language task's positions per evaluation forward (loop.EVAL_TOKENS)
FLOAT_BYTES = 4
# host memory a run keeps per step, counted low: the training log's Python lists (a
# loss float object and its pointer, 32 bytes; lr, epoch), the metrics table's 20-30
# float64 columns, each once (no copies counted)
STEP_BYTES = 256
TABLE_BYTES = 200  # disk per step: metrics.parquet (and a sample's trainlog.parquet)
MIN_STEP_SECONDS = 50e-6  # a lower bound on one step's time (see the module docstring)
LONG_RUN_SECONDS = 86400  # warn before a run that cannot take less than a day


@dataclass(frozen=True)
class ModelSize:
    """A model's parameter count and the activation bytes of one batch."""

    n_params: int
    train_activation_bytes: int  # all leaf outputs of one train-mode forward of a batch
    largest_output_bytes: int  # the largest leaf output of that forward


def model_size(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int,
               batch_size: int, dtype: torch.dtype = torch.float32) -> ModelSize:
    """Build ``cfg`` on the meta device (nothing is allocated) and size one forward of
    ``batch_size`` inputs of ``input_shape`` and ``dtype`` (int64: token ids): every leaf
    module's output, float32. ``ConfigError`` where the model cannot take that input
    (as ``build_model``)."""
    with torch.device("meta"):
        model = MODELS[cfg.name](cfg, tuple(input_shape), n_classes)
    shape = (batch_size, *input_shape)
    shapes = leaf_output_shapes(model, shape)
    if shapes is None:
        shapes = meta_leaf_output_shapes(model, shape, dtype)
    input_bytes = torch.empty((), dtype=dtype).element_size() * math.prod(shape)
    sizes = [input_bytes, *(FLOAT_BYTES * math.prod(s) for s in shapes)]
    n = sum(p.numel() for p in model.parameters())
    return ModelSize(n, sum(sizes), max(sizes))


def meta_leaf_output_shapes(model: nn.Module, input_shape: tuple[int, ...],
                            dtype: torch.dtype = torch.float32) -> list[tuple]:
    """The output shape of every leaf module (one without children) in a train-mode
    forward of a meta tensor of ``input_shape`` and ``dtype``, in call order. ``model``
    must be on the meta device. Exact for any model, but the first call in a process imports
    torch's meta kernels (seconds)."""
    shapes: list[tuple] = []

    def record(module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            shapes.append(tuple(out.shape))

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            dtype = getattr(model, "input_dtype", dtype)  # gpt: token ids, whatever asked
            model.train()(torch.zeros(input_shape, dtype=dtype, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return shapes


# torch.fx patches nn.Module.__call__ for the whole process while it traces: two traces
# at once (two runs started in threads of one process) broke each other's graphs
_TRACING = threading.Lock()


class _LeafTracer(fx.Tracer):
    """Every module without children is a leaf (torch.fx's default traces into modules
    defined outside torch.nn)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return next(m.children(), None) is None


def leaf_output_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple] | None:
    """``meta_leaf_output_shapes`` by shape rules over the model's ``torch.fx`` graph,
    in milliseconds; None where the graph holds an op without a rule (or does not
    trace). A custom leaf module gives its rule as an ``output_shape(shape)`` method."""
    try:
        with _TRACING:
            graph = _LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 -- untraceable control flow: use the meta forward
        return None
    modules = dict(model.named_modules())
    env: dict[fx.Node, tuple] = {}
    out: list[tuple] = []
    for node in graph.nodes:
        if node.op == "placeholder":
            shape: tuple | None = tuple(input_shape)
        elif node.op == "call_module":
            args = [env.get(a) for a in node.args if isinstance(a, fx.Node)]
            shape = _module_rule(modules[node.target], args[0]) if len(args) == 1 \
                and args[0] is not None else None
            if shape is not None:
                out.append(shape)
        elif node.op in ("call_function", "call_method"):
            shape = _function_rule(node, env)
        elif node.op == "output":
            break
        else:
            return None
        if shape is None:
            return None
        env[node] = shape
    return out


_SAME_SHAPE = (*TECHNIQUE_MODULES["norm"], *TECHNIQUE_MODULES["activation"],
               *TECHNIQUE_MODULES["dropout"])


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _module_rule(m: nn.Module, s: tuple) -> tuple | None:
    if isinstance(m, _SAME_SHAPE):
        return s
    if isinstance(m, nn.Linear):
        return (*s[:-1], m.out_features)
    if isinstance(m, nn.Embedding):
        return (*s, m.embedding_dim)
    if isinstance(m, nn.Conv2d | nn.MaxPool2d) and not isinstance(m.padding, str):
        k, st, p, d = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size,
                                            m.padding, m.dilation))
        if getattr(m, "ceil_mode", False):
            return None
        hw = [(s[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // st[i] + 1 for i in range(2)]
        c = m.out_channels if isinstance(m, nn.Conv2d) else s[1]
        return (s[0], c, *hw)
    if isinstance(m, nn.ConvTranspose2d):
        k, st, p, d, op = (_pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation,
                                              m.output_padding))
        hw = [(s[2 + i] - 1) * st[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1
              for i in range(2)]
        return (s[0], m.out_channels, *hw)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = _pair(m.output_size)
        return (*s[:2], *(s[2 + i] if size[i] is None else size[i] for i in range(2)))
    rule: Callable[[tuple], tuple] | None = getattr(m, "output_shape", None)
    return rule(s) if rule is not None else None


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    """numpy's broadcasting of two shapes (torch.broadcast_shapes imports sympy)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b, strict=True)):
        return None
    return tuple(max(x, y) if 1 in (x, y) else x for x, y in zip(a, b, strict=True))


def _function_rule(node: fx.Node, env: dict[fx.Node, tuple]) -> tuple | None:
    target = node.target
    args: list[Any] = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
    if target in (operator.add, torch.add) and all(isinstance(a, tuple) for a in args):
        return _broadcast(*args)
    if target is torch.zeros_like and isinstance(args[0], tuple):
        return args[0]
    if target is torch.cat and isinstance(node.args[0], list | tuple):
        parts: list[Any] = [env.get(a) for a in cast("list[fx.Node]", node.args[0])]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if any(p is None for p in parts) or not isinstance(dim, int):
            return None
        shape = list(parts[0])
        shape[dim] = sum(p[dim] for p in parts)
        return tuple(shape)
    if not args or not isinstance(args[0], tuple):
        return None
    s = args[0]
    if target == "unflatten":  # the transformers' heads
        dim, sizes = args[1] % len(s), tuple(args[2])
        return (*s[:dim], *sizes, *s[dim + 1 :])
    if target == "permute":
        return tuple(s[d] for d in args[1:])
    if target == "transpose":
        t = list(s)
        t[args[1]], t[args[2]] = s[args[2]], s[args[1]]
        return tuple(t)
    if target is operator.getitem and isinstance(args[1], int):
        return s[1:]
    if target is F.scaled_dot_product_attention and isinstance(args[2], tuple):
        return (*s[:-1], args[2][-1])
    if target == "mean" and len(args) == 2 and isinstance(args[1], int) \
            and not node.kwargs:
        return tuple(n for i, n in enumerate(s) if i != args[1] % len(s))
    if target in ("flatten", torch.flatten):
        start: Any = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end: Any = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
        end = end % len(s)
        return (*s[:start], math.prod(s[start : end + 1]), *s[end + 1 :])
    return None


@dataclass(frozen=True)
class RunMemory:
    """A run's estimated memory in bytes (see the module docstring for the formula)."""

    n_params: int
    param_bytes: int  # weights, gradients, optimizer state, the run's copies
    activation_bytes: int  # the larger of a training step's and an evaluation's
    data_bytes: int  # the data set in host memory, at its peak while loading
    data: DataSize
    device: str

    @property
    def model_bytes(self) -> int:
        return self.param_bytes + self.activation_bytes

    @property
    def on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    @property
    def host_bytes(self) -> int:
        """What the host's RAM holds: the data, and the model too on cpu."""
        return self.data_bytes + (0 if self.on_gpu else self.model_bytes)

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.model_bytes

    def describe(self) -> str:
        """``'1.09e+09 parameters: 34.9 GB, activations 1.2 GB, data 737 MB'``."""
        return (f"{self.n_params:.3g} parameters: {fmt_bytes(self.param_bytes)}, "
                f"activations {fmt_bytes(self.activation_bytes)}, "
                f"data {fmt_bytes(self.data_bytes)}")


def _block_size(cfg: RunConfig) -> int | None:
    return getattr(cfg.model, "block_size", None)


def _classes(cfg: RunConfig, n_classes: int | None) -> int:
    return planned_classes(cfg.data, _block_size(cfg)) if n_classes is None else n_classes


def estimate_run_memory(cfg: RunConfig, data: DataSize | None = None,
                        n_classes: int | None = None) -> RunMemory:
    """Size a validated run config without allocating anything (see the module docstring).
    ``data``, ``n_classes``: the size and classes of the data set when it is loaded
    already (``Dataset.size``, ``Dataset.n_classes``); None: its published size after
    ``subset`` and ``resize`` (``data.planned_size``, ``data.planned_classes``).
    ``ConfigError`` where the model cannot take the data set's input shape."""
    size = planned_size(cfg.data, _block_size(cfg)) if data is None else data
    data_bytes = size.nbytes
    spec = DATASETS[cfg.data.name]
    if data is None and cfg.data.resize is not None and not spec.sized \
            and size.input_shape != spec.shape:
        data_bytes += DataSize(size.n_train, size.n_test, spec.shape,
                               tuple(spec.shape[1:]) if size.target_shape else ()).nbytes
    # a step's activations are held for one micro-batch at a time (train.accumulate)
    batch = min(cfg.data.batch_size // cfg.train.accumulate, max(size.n_train, 1))
    tokens = size.input_bytes == 8  # int64 token ids: a language task
    m = model_size(cfg.model, size.input_shape, _classes(cfg, n_classes), batch,
                   torch.int64 if tokens else torch.float32)
    copies = 2 + optimizer_state_tensors(cfg.optim) + RUN_COPIES
    param_bytes = FLOAT_BYTES * m.n_params * copies
    train_act = 2 * m.train_activation_bytes
    per_example_largest = m.largest_output_bytes / batch
    chunk = max(1, EVAL_TOKENS // math.prod(size.input_shape)) if tokens else EVAL_CHUNK
    eval_act = 2 * per_example_largest * min(chunk, max(size.n_train, size.n_test, 1))
    return RunMemory(m.n_params, param_bytes, int(max(train_act, eval_act)), data_bytes,
                     size, cfg.train.device)


def check_run_size(cfg: RunConfig, data: DataSize | None = None,
                   n_classes: int | None = None) -> RunMemory:
    """The run's ``estimate_run_memory(cfg, data, n_classes)``, or ``ConfigError`` (one line, with
    the figures) when it is above the cap: ``train.max_memory_gb`` if set, else 75% of
    the machine's RAM (and, for cuda, of the GPU's memory for the model's part), or when
    its per-step records alone are (``train.epochs``, with the steps and a lower bound
    on the time); a ``UserWarning`` before a run that cannot take less than
    ``LONG_RUN_SECONDS``."""
    est = estimate_run_memory(cfg, data, n_classes)
    override = cfg.train.max_memory_gb
    host = memory_cap("cpu", override)
    checks = [(est.host_bytes, host)]
    if est.on_gpu:
        checks.append((est.model_bytes, memory_cap(cfg.train.device, override)))
    for needed, cap in checks:
        if not cap.allows(needed):
            raise ConfigError(f"{_blame(cfg, est)}: the run needs about {fmt_bytes(needed)} "
                              f"({est.describe()}), above {cap.about}; set "
                              "train.max_memory_gb to override")
    _check_steps(cfg, est, n_classes)
    return est


def _blame(cfg: RunConfig, est: RunMemory) -> str:
    """The key most to blame for a run's size: the data set's or the activations' size
    (resize, batch_size) or the parameters' (width)."""
    grown = cfg.data.resize is not None and \
        math.prod(est.data.input_shape) > math.prod(DATASETS[cfg.data.name].shape)
    worst = max(est.data_bytes, est.activation_bytes, est.param_bytes)
    if worst == est.data_bytes:
        return "data.resize" if grown else "data.subset"
    if worst == est.activation_bytes:
        return "data.resize" if grown else "data.batch_size"
    return "model.width"


@dataclass(frozen=True)
class RunSteps:
    """A run's length and what it costs by its number of steps."""

    steps: int  # optimizer steps T = epochs * (epoch examples // batch size)
    memory_bytes: int  # host memory for the per-step records (STEP_BYTES a step)
    disk_bytes: int  # what the record mode and the metrics table write
    record_mode: str

    @property
    def min_seconds(self) -> float:
        """A lower bound on the training time (``MIN_STEP_SECONDS`` a step)."""
        return self.steps * MIN_STEP_SECONDS

    def describe(self) -> str:
        """``'2.6e+10 steps, at least 15 days at 50 us a step'``."""
        return (f"{self.steps:.3g} steps, at least {fmt_seconds(self.min_seconds)} at "
                f"{MIN_STEP_SECONDS * 1e6:.0f} us a step")


def fmt_seconds(seconds: float) -> str:
    """``'3.2 hours'``, ``'15 days'``, ``'41 years'``."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600),
                       ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}" if seconds < 10 * size \
                else f"{seconds / size:.0f} {unit}"
    return f"{seconds:.2g} s"


def record_disk_bytes(cfg: RunConfig, steps: int, n_params: int) -> int:
    """What ``cfg.record.mode`` writes for a run of ``steps`` steps of ``n_params``
    float32 parameters (docs/record-modes.md), plus the metrics table."""
    from trajreg.record.modes import get_mode

    mode = get_mode(cfg.record.mode)
    # the metrics table; a sampled mode's also the training log of every step
    tables = TABLE_BYTES * steps * (2 if mode.sampled else 1)
    return mode.disk_bytes(cfg.record, n_params, steps, FLOAT_BYTES * n_params) + tables


def estimate_run_steps(cfg: RunConfig, data: DataSize | None = None,
                       n_params: int | None = None, n_classes: int | None = None) -> RunSteps:
    """The run's steps, their memory and disk (see the module docstring), from the
    config alone (``data``, ``n_params`` and ``n_classes`` as ``estimate_run_memory``
    finds them). ``data.n_train`` is an epoch's examples (windows for ``text``)."""
    size = planned_size(cfg.data, _block_size(cfg)) if data is None else data
    steps = cfg.train.epochs * (size.n_train // cfg.data.batch_size)
    if n_params is None:
        dtype = torch.int64 if size.input_bytes == 8 else torch.float32
        n_params = model_size(cfg.model, size.input_shape, _classes(cfg, n_classes), 1,
                              dtype).n_params
    return RunSteps(steps, STEP_BYTES * steps, record_disk_bytes(cfg, steps, n_params),
                    cfg.record.mode)


def _check_steps(cfg: RunConfig, est: RunMemory, n_classes: int | None = None) -> RunSteps:
    """Refuse a run whose per-step records alone exceed the host's memory cap; warn
    before one that cannot take less than ``LONG_RUN_SECONDS``."""
    run = estimate_run_steps(cfg, est.data, est.n_params, n_classes)
    cap = memory_cap("cpu", cfg.train.max_memory_gb)
    if not cap.allows(run.memory_bytes):
        raise ConfigError(f"train.epochs: {cfg.train.epochs} epochs are {run.describe()}; "
                          f"their records alone (loss, lr, the metrics table: about "
                          f"{STEP_BYTES} bytes a step) need about {fmt_bytes(run.memory_bytes)}"
                          f", above {cap.about}; set train.max_memory_gb to override")
    if run.min_seconds > LONG_RUN_SECONDS:
        warnings.warn(f"train.epochs: {cfg.train.epochs} epochs are {run.describe()}",
                      UserWarning, stacklevel=3)
    return run


def check_run_disk(cfg: RunConfig, out: str | Path, data: DataSize | None = None) -> RunSteps:
    """The run's ``estimate_run_steps``, or ``ConfigError`` (one line, with the steps,
    the bytes and the time) when what it writes is above the free space of the file
    system that will hold ``out`` (its nearest existing parent)."""
    run = estimate_run_steps(cfg, data)
    where = Path(out).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError:  # pragma: no cover - unreadable: the run's own write will say
        return run
    free = usage.free
    if usage.total and run.disk_bytes > free:  # total 0: /proc and the like, sizeless
        raise ConfigError(f"train.epochs: the run writes about {fmt_bytes(run.disk_bytes)} "
                          f"(record mode {run.record_mode}, {run.describe()}), above the "
                          f"{fmt_bytes(free)} free on {where}")
    return run
