"""Typed run configuration, loaded from YAML and validated once, at the edge.

Every section is a dataclass; ``load_config`` turns a mapping into a validated
``RunConfig`` or raises ``ConfigError`` naming the offending key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trajreg.errors import ConfigError
from trajreg.record.modes import MODE_NAMES

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid", "identity")
NORMS = ("none", "batch", "layer", "group")
INITS = ("default", "kaiming", "xavier", "orthogonal")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine")
RECORD_MODES = MODE_NAMES  # the record-mode registry (trajreg.record.modes)
REFERENCES = ("final", "best")


@dataclass
class DataConfig:
    name: str = "digits"
    batch_size: int = 64
    subset: int | None = None  # keep the first N training examples
    test_fraction: float = 0.2  # for data sets without their own test split
    resize: int | None = None  # resize images to this side (bilinear; masks: nearest)
    normalize: bool = True  # standardise with the training set's statistics
    root: str | None = None  # directory holding mnist / fashion_mnist / cifar10 files

    def validate(self) -> None:
        from trajreg.train.data import DATASETS

        _choice("data.name", self.name, tuple(DATASETS))
        _positive("data.batch_size", self.batch_size)
        if self.subset is not None:
            _positive("data.subset", self.subset)
        if self.resize is not None:
            _positive("data.resize", self.resize)
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction: must be in [0, 1), got {self.test_fraction}")


@dataclass
class ModelConfig:
    name: str = "mlp"
    variant: str | None = None  # vgg11/13/16/19, resnet20/32/56/18/34; None: the default
    depth: int = 6  # mlp: number of linear layers
    width: float = 64  # mlp: hidden units; convolutional nets: multiplier on every layer
    activation: str = "relu"
    norm: str = "none"
    skip: bool = True  # resnet, unet: the skip connections
    dropout: float = 0.0  # mlp, alexnet
    init: str = "default"

    def validate(self) -> None:
        from trajreg.train.models import MODELS, VARIANTS

        _choice("model.name", self.name, tuple(MODELS))
        if self.variant is not None:
            _choice("model.variant", self.variant, VARIANTS.get(self.name, ()))
        _positive("model.depth", self.depth)
        _positive("model.width", self.width)
        if self.name == "mlp" and self.width != int(self.width):
            raise ConfigError(f"model.width: the mlp's hidden units must be a whole number, "
                              f"got {self.width}")
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.norm", self.norm, NORMS)
        _choice("model.init", self.init, INITS)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float | None = None  # None: 0.9 for momentum and nesterov, else 0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    schedule: str = "constant"  # constant | step | cosine | warmup_cosine
    step_epochs: int = 10  # step: decay the lr every this many epochs ...
    decay: float = 0.1  # ... by this factor
    warmup_epochs: int = 1  # warmup_cosine: linear warmup over this many epochs

    def validate(self) -> None:
        _choice("optim.name", self.name, OPTIMIZERS)
        _positive("optim.lr", self.lr)
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"optim.momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: must be two numbers in [0, 1), got {self.betas}")
        _choice("optim.schedule", self.schedule, SCHEDULES)
        _positive("optim.step_epochs", self.step_epochs)
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"optim.decay: must be in (0, 1], got {self.decay}")
        _positive("optim.warmup_epochs", self.warmup_epochs)
        if self.name == "nesterov" and self.momentum == 0.0:
            raise ConfigError("optim.momentum: nesterov needs momentum > 0")
        if self.name in ("adam", "adamw", "adagrad") and self.momentum:
            raise ConfigError(f"optim.momentum: {self.name} takes no momentum"
                              + (" (set optim.betas)" if self.name != "adagrad" else ""))

    def resolve(self) -> None:
        if self.momentum is None:
            self.momentum = 0.9 if self.name in ("momentum", "nesterov") else 0.0


@dataclass
class TrainConfig:
    epochs: int = 30
    device: str = "cpu"

    def validate(self) -> None:
        _positive("train.epochs", self.epochs)
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"train.device: must be 'cpu' or 'cuda[:N]', got {self.device!r}")


@dataclass
class RecordConfig:
    """How the trajectory is recorded (docs/record-modes.md).

    ``sample_rate``: mode sample keeps each step with this probability. ``sketch_dim``:
    mode sketch's CountSketch size k (None: the measured default). ``sketch_sample_rate``:
    the exact sample a sketched run checks itself against."""

    mode: str = "store"
    sample_rate: float = 0.05
    sketch_dim: int | None = None
    sketch_sample_rate: float = 0.02

    def validate(self) -> None:
        _choice("record.mode", self.mode, RECORD_MODES)
        for key in ("sample_rate", "sketch_sample_rate"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"record.{key}: must be in (0, 1], got {value!r}")
        if self.sketch_dim is not None and not 1 <= self.sketch_dim < 2**31:
            raise ConfigError(f"record.sketch_dim: must be an integer in [1, 2^31), "
                              f"got {self.sketch_dim!r}")


@dataclass
class AnalysisConfig:
    eps: list[float] = field(default_factory=lambda: [0.0, 0.05])
    tau: float = 0.05
    max_fraction: float = 0.9
    reference: str = "final"
    delta: float | None = None  # None: the default delta_t = eta_t / 2
    loss_threshold: float = 0.1

    def validate(self) -> None:
        if not self.eps or not all(0.0 <= e < 1.0 for e in self.eps):
            raise ConfigError(f"analysis.eps: must be numbers in [0, 1), got {self.eps}")
        if not 0.0 < self.tau < 1.0:
            raise ConfigError(f"analysis.tau: must be in (0, 1), got {self.tau}")
        if not 0.0 < self.max_fraction <= 1.0:
            raise ConfigError(f"analysis.max_fraction: must be in (0, 1], got {self.max_fraction}")
        _choice("analysis.reference", self.reference, REFERENCES)
        if self.delta is not None and self.delta < 0:
            raise ConfigError(f"analysis.delta: must be >= 0, got {self.delta}")
        _positive("analysis.loss_threshold", self.loss_threshold)


@dataclass
class RunConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def validate(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_yaml(source: str | Path | dict[str, Any], what: str = "config") -> Any:
    """A mapping as given, or the contents of a YAML file (ConfigError if unreadable)."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(source: str | Path | dict[str, Any]) -> RunConfig:
    """Validate a run config from a YAML file path or a mapping into a ``RunConfig``."""
    cfg = _build(RunConfig, read_yaml(source), "")
    cfg.validate()
    cfg.optim.resolve()
    return cfg


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in raw.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", value, kind)
    return cls(**kwargs)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {kind!r} for {key}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r} (allowed: {', '.join(allowed)})")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")
