"""Typed run configuration, loaded from YAML and validated once, at the edge.

Every section is a dataclass; ``load_config`` turns a mapping or a YAML file into a
validated ``RunConfig`` or raises ``ConfigError`` naming the offending key. The
``data``, ``model`` and ``optim`` sections live with the registries that own their
names (``data.DataConfig``, ``models.ModelConfig``, ``optim.OptimConfig``, re-exported
here; those modules import nothing from this one) and the builders there trust a
validated config. ``read_yaml`` is the one YAML reader, for run
configs and studies alike (YAML 1.2 scalars, duplicate keys refused).
"""

from __future__ import annotations

import dataclasses
import re
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trajreg.errors import ConfigError
from trajreg.record.modes import MODE_NAMES, MODES, get_mode
from trajreg.train.checks import (
    FLOAT32_MAX,
    OMIT_AT_DEFAULT,
    check_float32,
    choice,
    positive,
    quote,
    short,
)
from trajreg.train.checks import FLOAT32_TINY as FLOAT32_TINY  # re-exported, as before
from trajreg.train.checks import QUOTE_CHARS as QUOTE_CHARS
from trajreg.train.data import DATASETS, DataConfig, check_tokens
from trajreg.train.models import ACTIVATION_LAYERS, INIT_SCHEMES, MODELS, NORM_LAYERS, ModelConfig
from trajreg.train.optim import OPTIMIZERS as OPTIMIZER_SPECS
from trajreg.train.optim import SCHEDULES as SCHEDULE_FACTORS
from trajreg.train.optim import OptimConfig

# The allowed values, derived from the registries (kept as tuples for importers).
ACTIVATIONS = tuple(ACTIVATION_LAYERS)
NORMS = tuple(NORM_LAYERS)
INITS = tuple(INIT_SCHEMES)
OPTIMIZERS = tuple(OPTIMIZER_SPECS)
SCHEDULES = tuple(SCHEDULE_FACTORS)
DATASET_NAMES = tuple(DATASETS)
MODEL_NAMES = tuple(MODELS)
REQUIRED_SECTIONS = ("data", "model", "optim")
RECORD_MODES = MODE_NAMES  # the record-mode registry (trajreg.record.modes)
REFERENCES = ("final", "best")


@dataclass
class TrainConfig:
    epochs: int = 30
    device: str = "cpu"
    threads: int | None = None  # torch's intra-op threads; None: torch's default
    # the memory a run may use (size.check_run_size); None: 75% of the machine's RAM,
    # or of the GPU's memory for cuda (machine.memory_cap)
    max_memory_gb: float | None = None
    # trajreg.distributed: N processes (DDP or FSDP2) training one run; None: one process
    distributed: DistributedConfig | None = None
    # the largest global gradient norm an optimizer step sees (clip_grad_norm_); None: off
    grad_clip: float | None = field(default=None, metadata=OMIT_AT_DEFAULT)
    # micro-batches per optimizer step (gradient accumulation); data.batch_size stays the
    # step's batch size
    accumulate: int = field(default=1, metadata=OMIT_AT_DEFAULT)
    # save the model's state (torch.save) at step 0 and every epoch end into the run
    # directory's checkpoints/ (trajreg checkpoints measures them)
    checkpoints: bool = field(default=False, metadata=OMIT_AT_DEFAULT)

    def validate(self) -> None:
        positive("train.epochs", self.epochs)
        if not isinstance(self.checkpoints, bool):
            raise ConfigError(f"train.checkpoints: must be true or false, got "
                              f"{quote(self.checkpoints)}")
        if self.checkpoints and self.distributed is not None:
            raise ConfigError("train.checkpoints: one process only (a distributed run's "
                              "checkpoints are the training script's to save)")
        if self.grad_clip is not None:
            positive("train.grad_clip", self.grad_clip)
            check_float32("train.grad_clip", self.grad_clip)
        positive("train.accumulate", self.accumulate)
        if self.distributed is not None:  # trajreg.distributed
            self.distributed.validate()
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"train.device: must be 'cpu' or 'cuda[:N]', got "
                              f"{quote(self.device)}")
        if self.threads is not None:
            positive("train.threads", self.threads)
        if self.max_memory_gb is not None:
            positive("train.max_memory_gb", self.max_memory_gb)


@dataclass
class DistributedConfig:
    """``train.distributed`` (trajreg.distributed, docs/distributed.md): ``nproc`` processes
    launched with torch.distributed's launcher, each taking its contiguous part of every
    global batch (``data.batch_size`` stays the global batch size)."""

    strategy: str = "ddp"  # ddp: every rank holds all parameters; fsdp: FSDP2 fully_shard
    nproc: int = 2
    backend: str = "gloo"  # gloo (CPU) | nccl (CUDA)

    def validate(self) -> None:
        choice("train.distributed.strategy", self.strategy, ("ddp", "fsdp"))
        positive("train.distributed.nproc", self.nproc)
        choice("train.distributed.backend", self.backend, ("gloo", "nccl"))

    def check_run(self, cfg: RunConfig) -> None:
        """What the distributed run needs of the other sections (one-line ConfigErrors)."""
        n, bs, k = self.nproc, cfg.data.batch_size, cfg.train.accumulate
        if bs % (n * k):
            by = f"train.distributed.nproc {n}" + (f" times train.accumulate {k}" if k > 1
                                                   else "")
            what = "micro-batch" if k > 1 else "global batch"
            raise ConfigError(f"data.batch_size: {bs} is not divisible by {by} (each "
                              f"process takes an equal part of every {what})")
        mode = get_mode(cfg.record.mode)
        if mode.reexecutes:
            raise ConfigError(f"record.mode: {mode.name} cannot measure a distributed run (a "
                              "replay re-executes the run in one process); use store")
        if self.strategy == "fsdp" and not mode.shardable:
            able = ", ".join(n for n, m in MODES.items() if m.shardable)
            raise ConfigError(f"record.mode: {mode.name} is not supported with "
                              f"train.distributed.strategy fsdp ({able} are)")
        if self.strategy == "fsdp" and cfg.record.curvature is not None:
            raise ConfigError(
                "record.curvature: not supported with train.distributed.strategy fsdp: "
                "its Hessian-vector products need double backward, which FSDP2's "
                f"fully_shard does not support in torch {_torch_version()} (the gathered "
                "parameters are not in the autograd graph of the sharded ones); use ddp")
        if self.backend == "nccl" and not cfg.train.device.startswith("cuda"):
            raise ConfigError("train.distributed.backend: nccl needs train.device cuda; "
                              "use gloo on the CPU")


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


@dataclass
class CurvatureConfig:
    """``record.curvature`` (docs/principle.md, section 15): at a seeded sample of steps
    (each with probability ``rate``), the top Hessian eigenvalue of the step's minibatch
    loss at x_t by Lanczos (at most ``iterations`` Hessian-vector products, stopped at
    a residual bound of ``tol``), the curvature along the update, the critical sharpness
    (``critical``: a few forward passes) and, for Adam-family optimizers, the
    preconditioned sharpness."""

    rate: float = 0.001
    iterations: int = 20
    tol: float = 1e-3
    critical: bool = True

    def validate(self, where: str = "record.curvature") -> None:
        """``where``: how the option is named in the message (a session's
        ``curvature``)."""
        if isinstance(self.rate, bool) or not 0.0 < self.rate <= 1.0:
            raise ConfigError(f"{where}.rate: must be in (0, 1], got {quote(self.rate)}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) \
                or self.iterations < 1:
            raise ConfigError(f"{where}.iterations: must be a whole number >= 1, got "
                              f"{quote(self.iterations)}")
        if not self.tol > 0:
            raise ConfigError(f"{where}.tol: must be > 0, got {quote(self.tol)}")
        if not isinstance(self.critical, bool):
            raise ConfigError(f"{where}.critical: must be true or false, got "
                              f"{quote(self.critical)}")

    @classmethod
    def from_option(cls, value: Any, where: str = "curvature") -> CurvatureConfig | None:
        """A session's or a callback's ``curvature=``: None (off), a mapping of this
        class's keys or an instance, type-checked and validated as a config's
        ``record.curvature`` is (``ConfigError`` naming ``where`` and the key)."""
        if value is None:
            return None
        if isinstance(value, cls):
            value = dataclasses.asdict(value)
        if not isinstance(value, Mapping):
            keys = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"{where}: must be a dict of {keys} or a CurvatureConfig, got "
                              f"{type(value).__name__}")
        option = _build(cls, value, f"{where}.")
        option.validate(where)
        return option


@dataclass
class RecordConfig:
    """How the trajectory is recorded (docs/record-modes.md).

    ``sample_rate`` and ``sample_min_steps``: mode sample keeps each step with
    probability min(1, max(sample_rate, sample_min_steps / T)) in a run of T steps (so a
    short run keeps about sample_min_steps steps, enough for a two-sided interval, and a
    long one the fraction sample_rate). ``sketch_dim``: mode sketch's CountSketch size k
    (None: the measured default, ``trajreg.record.modes.sketch.default_dim``).
    ``sketch_sample_rate`` and ``sketch_check_steps``: the same pair for the exact
    sample a sketched run checks itself against. ``gradients``: also record
    the minibatch gradient g_t each step's optimizer sees (None: the mode's default,
    on for sample and sketch, off for store and replay). ``keep_trajectory``: False
    deletes the mode's files under trajectory/ once the run is measured (before the run
    directory is finished), for studies of many runs: re-analysis with other eps, delta
    or window still works from metrics.parquet, another reference point does not.
    ``interpolation``: evaluate F on the segment from x_0 to x* after training (the
    summary's ``mli``, 19 full-loss evaluations); False leaves ``mli`` null."""

    mode: str = "store"
    sample_rate: float = 0.05
    sample_min_steps: int = 200  # trajreg.record.modes.sample.DEFAULT_MIN_STEPS
    sketch_dim: int | None = None
    sketch_sample_rate: float = 0.02
    sketch_check_steps: int = 100  # trajreg.record.modes.sketch.DEFAULT_CHECK_STEPS
    gradients: bool | None = None
    keep_trajectory: bool = True
    interpolation: bool = True
    curvature: CurvatureConfig | None = field(default=None, metadata=OMIT_AT_DEFAULT)

    def validate(self) -> None:
        choice("record.mode", self.mode, RECORD_MODES)
        if self.curvature is not None:
            self.curvature.validate()
            if not get_mode(self.mode).measures:
                raise ConfigError(f"record.curvature: record mode {self.mode} measures "
                                  "nothing to put curvature beside")
        for key in ("sample_rate", "sketch_sample_rate"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"record.{key}: must be in (0, 1], got {quote(value)}")
        for key in ("sample_min_steps", "sketch_check_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"record.{key}: must be a whole number of steps >= 0 (0: "
                                  f"the rate alone), got {quote(value)}")
        if self.sketch_dim is not None and not 1 <= self.sketch_dim < 2**31:
            raise ConfigError(f"record.sketch_dim: must be an integer in [1, 2^31), "
                              f"got {quote(self.sketch_dim)}")
        if self.gradients and not get_mode(self.mode).hooks:
            raise ConfigError(f"record.gradients: record mode {self.mode} records nothing")


@dataclass
class AnalysisConfig:
    eps: list[float] = field(default_factory=lambda: [0.0, 0.05])
    tau: float = 0.05
    max_fraction: float = 0.9
    reference: str = "final"
    delta: float | None = None  # None: the default delta_t = eta_t / 2
    loss_threshold: float = 0.1
    train_margin: float = 0.1  # a run trained when F_final <= (1 - margin) F_0

    def validate(self) -> None:
        if not self.eps or not all(0.0 <= e < 1.0 for e in self.eps):
            raise ConfigError(f"analysis.eps: must be numbers in [0, 1), got {quote(self.eps)}")
        if not 0.0 < self.tau < 1.0:
            raise ConfigError(f"analysis.tau: must be in (0, 1), got {quote(self.tau)}")
        if not 0.0 < self.max_fraction <= 1.0:
            raise ConfigError(f"analysis.max_fraction: must be in (0, 1], got "
                              f"{quote(self.max_fraction)}")
        choice("analysis.reference", self.reference, REFERENCES)
        if self.delta is not None:
            if self.delta < 0:
                raise ConfigError(f"analysis.delta: must be >= 0, got {quote(self.delta)}")
            if self.delta > FLOAT32_MAX:
                raise ConfigError(f"analysis.delta: must be at most {FLOAT32_MAX:.4g} (delta is "
                                  "on the scale of the learning rate, a float32), got "
                                  f"{quote(self.delta)}")
        positive("analysis.loss_threshold", self.loss_threshold)
        if not 0.0 <= self.train_margin < 1.0:
            raise ConfigError(f"analysis.train_margin: must be in [0, 1), got "
                              f"{quote(self.train_margin)}")


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
            raise ConfigError(f"seed: must be >= 0, got {quote(self.seed)}")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                typing.cast(Any, section).validate()
        bs, k = self.data.batch_size, self.train.accumulate
        if bs % k:
            raise ConfigError(f"data.batch_size: {bs} is not divisible by train.accumulate "
                              f"{k} (every micro-batch of a step has the same size)")
        check_tokens(self.data, self.model.block_size)  # the token sets' windows fit
        if self.train.distributed is not None:  # trajreg.distributed: cross-section checks
            self.train.distributed.check_run(self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()  # the transformer keys only where they matter
        if self.train.distributed is None:  # trajreg.distributed: absent unless set, so
            del out["train"]["distributed"]  # single-process configs (and run ids) are unchanged
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                for key in omitted_at_default(section):
                    del out[f.name][key]
        return out


def omitted_at_default(section: Any) -> list[str]:
    """The keys of a config section that ``RunConfig.to_dict`` leaves out: those added
    after runs were first written (``checks.OMIT_AT_DEFAULT``), while at their defaults,
    so an older config's dict, and the run id studies derive from it, stay the same."""
    out = []
    for f in dataclasses.fields(section):
        if not f.metadata.get("omit_at_default"):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(section, f.name) == default:
            out.append(f.name)
    return out


# ----------------------------------------------------------------------------- YAML

_MERGE = "tag:yaml.org,2002:merge"
# YAML 1.2's core schema: only true/false are booleans (yes, no, on, off, y, n stay
# strings), 1e-3 is a float, 010 a decimal integer, and there are no timestamps.
_CORE_SCHEMA = (
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
     r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", "-+.0123456789"),
)
_KEPT_TAGS = ("tag:yaml.org,2002:null", _MERGE)  # PyYAML's null and merge (<<) agree with 1.2


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A key given twice in one mapping."""

    def __init__(self, key: str, first_line: int, mark: yaml.Mark) -> None:
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=mark)
        self.key, self.first_line = key, first_line


MAX_YAML_VALUES = 100_000  # nodes a config or study may hold, aliases (*name) expanded


class AliasBombError(yaml.YAMLError):
    """A document whose aliases expand it beyond ``MAX_YAML_VALUES`` nodes, or refer
    to themselves."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def expanded_size(root: yaml.Node, cap: int = MAX_YAML_VALUES) -> int:
    """The nodes of ``root`` with every alias expanded (each use of an anchored node
    counts all of its nodes), counted on the composed graph without expanding it;
    counting stops past ``cap``. ``AliasBombError`` for a node inside itself."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = min(cap + 1, 1 + sum(size[id(c)] for c in _children(node)))
            continue
        if key in size:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise AliasBombError("an alias refers to a node that contains it (a "
                                     "recursive anchor)")
            if id(child) not in size:
                stack.append((child, False))
    return size[id(root)]


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars and no duplicate keys.

    Anchors and aliases (``&base``, ``*base``, ``<<: *base``) work, but a document
    whose aliases expand it beyond ``MAX_YAML_VALUES`` nodes (an alias bomb: a few
    lines that expand to billions of values) or into itself is refused after
    composing and before constructing anything (``AliasBombError``)."""

    def compose_document(self) -> yaml.Node | None:  # type: ignore[override]
        node = super().compose_document()
        if node is not None and expanded_size(node) > MAX_YAML_VALUES:
            raise AliasBombError(f"its aliases (*name) expand it to more than "
                                 f"{MAX_YAML_VALUES} values (an alias bomb?)")
        return node

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag in _KEPT_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    # types-PyYAML types ``anchor`` as a dict; PyYAML passes the anchor name (str or None)
    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:  # type: ignore[override]
        node = super().compose_mapping_node(anchor)  # type: ignore[arg-type]  # stub: see above
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise DuplicateKeyError(key_node.value, seen[ident], key_node.start_mark)
                seen[ident] = key_node.start_mark.line + 1
        return node

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return self.construct_scalar(node).lower() == "true"

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = self.construct_scalar(node)
        if value.startswith(("0o", "0x")):
            return int(value[2:], 8 if value[1] == "o" else 16)
        return int(value)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = self.construct_scalar(node).lower()
        if value.endswith((".inf", ".nan")):
            return float(value.replace(".", ""))
        return float(value)


for _tag, _regex, _first in _CORE_SCHEMA:
    ConfigLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_regex})$"), list(_first))
ConfigLoader.add_constructor("tag:yaml.org,2002:bool", ConfigLoader.construct_yaml_bool)
ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)
ConfigLoader.add_constructor("tag:yaml.org,2002:float", ConfigLoader.construct_yaml_float)


def parse_yaml(text: str, where: str = "<string>", what: str = "config") -> dict[str, Any]:
    """The mapping in YAML ``text``; ``ConfigError`` (one line, starting with ``where``)
    when it is not valid YAML, has a duplicate key, is empty or is not a mapping."""
    try:
        raw = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 -- a SafeLoader subclass
    except DuplicateKeyError as exc:
        assert exc.problem_mark is not None
        raise ConfigError(f"{where}: line {exc.problem_mark.line + 1}: duplicate key "
                          f"{short(exc.key, quoted=True)} (first given on line "
                          f"{exc.first_line})") from None
    except AliasBombError as exc:
        raise ConfigError(f"{where}: refused: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{where}: not a text file (character #x{exc.character:04x} at "
                          f"position {exc.position}); a {what} is YAML text") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(filter(None, (exc.context, exc.problem))) or "syntax error"
        raise ConfigError(f"{where}: not valid YAML: {problem}{at}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        raise ConfigError(f"{where}: {what} is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level of a {what} must be a mapping "
                          f"(key: value lines), got {_kind(raw)}")
    return raw


def read_yaml(source: str | Path | Mapping[str, Any], what: str = "config") -> dict[str, Any]:
    """A mapping as given, or the mapping in a YAML file (``parse_yaml``); ``ConfigError``
    when the file is missing, unreadable, not UTF-8 text, empty or not a mapping. ``what``
    names the file in messages (``"config"``, ``"study"``)."""
    if isinstance(source, Mapping):
        return source  # type: ignore[return-value]
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{path}: is a directory, not a {what} file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: is not a regular file ({_file_kind(mode)}); a {what} "
                          "is a YAML file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start} is not UTF-8); a {what} is YAML text") from None
    return parse_yaml(text, str(path), what)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))
    return next((word for test, word in kinds if test(mode)), "not a file")


def load_config(source: str | Path | Mapping[str, Any], *,
                require_sections: bool = True) -> RunConfig:
    """Validate a run config from a YAML file path or a mapping into a ``RunConfig``.

    The sections ``data``, ``model`` and ``optim`` are required (``ConfigError`` naming
    the first missing one); ``require_sections=False`` fills them with the defaults, for
    code that builds a config from a partial mapping. ``optim.momentum`` and
    ``model.width`` left unset are resolved to their defaults.
    """
    raw = read_yaml(source)
    if require_sections:
        for section in REQUIRED_SECTIONS:
            if section not in raw:
                raise ConfigError(f"{section}: missing section (required: "
                                  f"{', '.join(REQUIRED_SECTIONS)})")
    cfg = _build(RunConfig, raw, "")
    cfg.validate()
    cfg.optim.resolve()
    cfg.model.resolve()
    return cfg


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number",
             bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix}{short(key)}: unknown key (allowed: "
                              f"{', '.join(sorted(names))})")
    kwargs = {}
    for key, value in raw.items():
        kind = hints[key]
        if value is not None and typing.get_origin(kind) in (typing.Union, types.UnionType):
            # an optional section (train.distributed, trajreg.distributed): a mapping builds it
            kind = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(typing.cast(type, kind), value, f"{prefix}{key}.")
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
            raise ConfigError(f"{key}: must be a list, got {quote(value)}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {quote(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {quote(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {quote(value)}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: must be a finite number, got {quote(value)}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {quote(value)}")
        return value
    raise TypeError(f"unsupported config type {kind!r} for {key}")
