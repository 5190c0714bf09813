"""Study files: a base run config, axes to vary, seeds; expanded into keyed runs.

A study file (YAML)::

    name: norm-and-activation          # optional, for the report
    base: {data: {...}, model: {...}, optim: {...}, train: {...}, record: {mode: store}}
    grid:                              # dotted run-config keys -> values
      model.norm: [none, batch]
      model.activation: [relu, identity]
    seeds: [0, 1, 2]
    compare:                           # optional: which value is the technique
      model.activation: {with: relu}   # relu against each other value
      model.norm: {without: none}      # each other value against none

or, for several comparisons on different networks and data, ``blocks``: each block
has its own ``name``, ``base`` (merged over the study's ``base``), ``grid``, and
optionally ``seeds``, ``compare`` and ``note`` (a sentence for the report, e.g. why
that data set). Runs are keyed by a hash of their resolved run config, so two
blocks that ask for the same run share it, and a run is never trained twice.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajreg.errors import ConfigError, UserError
from trajreg.record.modes import get_mode
from trajreg.study.layout import read_study_file
from trajreg.train.config import load_config, read_yaml

# Default direction of each comparison: (role, value). "with" names the value that
# is the technique (compared against every other value); "without" names the value
# that is its absence (every other value is compared against it).
DEFAULT_COMPARE: dict[str, tuple[str, Any]] = {
    "model.activation": ("with", "relu"),
    "model.norm": ("without", "none"),
    "model.skip": ("with", True),
    "model.dropout": ("without", 0.0),
    "optim.name": ("without", "sgd"),
    "model.norm_position": ("with", "pre"),
    "model.qk_norm": ("with", True),
    "optim.warmup_steps": ("without", 0),
    "train.grad_clip": ("without", None),
    "optim.weight_decay": ("without", 0.0),
}
# Comparisons along these axes change the step size's meaning, so they use the
# learning-rate-free kappa_hat = eta * gamma_hat (docs/principle.md)
KAPPA_PREFIXES = ("optim.",)

PRESETS = Path(__file__).parent / "presets"
STUDY_KEYS = {"name", "base", "grid", "seeds", "compare", "blocks", "note", "report"}
BLOCK_KEYS = {"name", "base", "grid", "seeds", "compare", "note"}
# train.threads of every run unless the study sets it: the run's config (and so its
# id and its numbers) must not depend on how many runs execute side by side (--jobs)
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class ReportOptions:
    """The study file's ``report`` section: how the report decides (see tables.py)."""

    eps: float = 0.05  # the eps of gamma_hat / kappa_hat compared
    alpha: float = 0.05  # significance level, after the Holm correction
    min_effect: float = 0.05  # smallest |median difference|, relative to the larger side
    # trained: final loss <= (1 - margin) * initial loss; None: each run's own verdict
    # (Summary.trained, at its analysis.train_margin, 0.1 by default)
    train_margin: float | None = None

    @property
    def eps_key(self) -> str:
        """The eps as a summary key ("0.05")."""
        return str(float(self.eps))

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> ReportOptions:
        limits = {"eps": (0.0, 1.0, "[0, 1)"), "alpha": (0.0, 1.0, "(0, 1)"),
                  "min_effect": (0.0, math.inf, ">= 0"), "train_margin": (0.0, 1.0, "[0, 1)")}
        values = {}
        for key, value in raw.items():
            if key not in limits:
                raise ConfigError(f"report.{key}: unknown report key (allowed: "
                                  f"{', '.join(sorted(limits))})")
            low, high, text = limits[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"report.{key}: must be a number {text}, got {value!r}")
            ok = (low < value < high if key == "alpha" else low <= value < high)
            if not ok:
                raise ConfigError(f"report.{key}: must be {text}, got {value!r}")
            values[key] = float(value)
        return cls(**values)


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: its key, resolved config, and where it sits in the grid."""

    run_id: str
    config: dict[str, Any]  # resolved run config, as RunConfig.to_dict()
    blocks: tuple[str, ...]  # the blocks asking for it (Block.members has each one's axes)

    @property
    def seed(self) -> int:
        return self.config["seed"]


@dataclass
class Block:
    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: list[int]
    compare: dict[str, tuple[str, Any]]
    note: str = ""
    # (run_id, grid values, seed) of every run the block expands to, in grid order
    members: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)


@dataclass
class Study:
    """A validated study: its blocks and the runs they expand to (deduplicated)."""

    name: str
    blocks: list[Block]
    raw: dict[str, Any]
    report: ReportOptions = field(default_factory=ReportOptions)
    runs: list[RunSpec] = field(default_factory=list)

    def run(self, run_id: str) -> RunSpec:
        return self._by_id[run_id]

    def __post_init__(self) -> None:
        self._by_id: dict[str, RunSpec] = {}


def run_id(config: dict[str, Any]) -> str:
    """A stable key for a resolved run config: sha256 of its canonical JSON, 12 hex digits.

    >>> run_id({"seed": 0}) == run_id({"seed": 0}) != run_id({"seed": 1})
    True
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree["a"]["b"] = value for key "a.b", creating mappings on the way; a mapping
    value merges into a mapping (so one axis can set several keys of a section, e.g.
    an optimizer with its own learning rate).

    >>> t = {"model": {"depth": 2}}; set_dotted(t, "model.norm", "batch"); t
    {'model': {'depth': 2, 'norm': 'batch'}}
    >>> set_dotted(t, "model", {"width": 0.5}); t
    {'model': {'depth': 2, 'norm': 'batch', 'width': 0.5}}
    """
    *path, last = key.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"grid key {key}: {part} is not a section")
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = merge(node[last], value)
    else:
        node[last] = copy.deepcopy(value)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def _seeds(where: str, value: Any) -> list[int]:
    if (not isinstance(value, list) or not value
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value)):
        raise ConfigError(f"{where}: must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: repeated seed in {value!r}")
    return list(value)


def _compare(where: str, raw: Any, grid: dict[str, list[Any]]) -> dict[str, tuple[str, Any]]:
    raw = _mapping(where, raw or {})
    out: dict[str, tuple[str, Any]] = {}
    for key in raw:
        if key not in grid:
            raise ConfigError(f"{where}.{key}: not an axis of the grid "
                              f"(axes: {', '.join(grid) or 'none'})")
    for key, values in grid.items():
        if len(values) < 2:
            continue
        if key in raw:
            entry = _mapping(f"{where}.{key}", raw[key])
            if len(entry) != 1 or next(iter(entry)) not in ("with", "without"):
                raise ConfigError(f"{where}.{key}: must be {{with: VALUE}} or "
                                  f"{{without: VALUE}}, got {entry!r}")
            role, value = next(iter(entry.items()))
        else:
            role, value = DEFAULT_COMPARE.get(key, ("without", values[0]))
        if value not in values:
            if key in raw:
                raise ConfigError(f"{where}.{key}: {value!r} is not one of the axis values "
                                  f"{values!r}")
            role, value = "without", values[0]
        out[key] = (role, value)
    return out


def _block(where: str, raw: dict[str, Any], base: dict[str, Any], seeds: Any,
           compare: Any) -> Block:
    grid_raw = _mapping(f"{where}grid", raw.get("grid", {}))
    grid: dict[str, list[Any]] = {}
    for key, values in grid_raw.items():
        if key in ("seed",):
            raise ConfigError(f"{where}grid.{key}: give seeds under 'seeds', not in the grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}grid.{key}: must be a non-empty list of values")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise ConfigError(f"{where}grid.{key}: repeated value in {values!r}")
        grid[key] = list(values)
    block_base = merge(base, _mapping(f"{where}base", raw.get("base", {})))
    block_seeds = _seeds(f"{where}seeds", raw.get("seeds", seeds))
    return Block(name=str(raw.get("name", "main")), base=block_base, grid=grid,
                 seeds=block_seeds,
                 compare=_compare(f"{where}compare", raw.get("compare", compare), grid),
                 note=str(raw.get("note", "")))


def expand(block: Block) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(resolved run config, grid values) for every grid point and seed of a block.

    Each config is validated as a run config, so a bad value stops the study
    before anything runs, with the message naming the block and key.
    """
    keys = list(block.grid)
    out = []
    for values in itertools.product(*(block.grid[k] for k in keys)):
        axes = dict(zip(keys, values, strict=True))
        for seed in block.seeds:
            raw = copy.deepcopy(block.base)
            train = raw.setdefault("train", {})
            if isinstance(train, dict):
                train.setdefault("threads", DEFAULT_THREADS)
            for key, value in axes.items():
                set_dotted(raw, key, value)
            raw["seed"] = seed
            try:
                cfg = load_config(raw)
            except ConfigError as exc:
                raise ConfigError(f"block {block.name}: {exc}") from None
            out.append((cfg.to_dict(), axes))
    return out


def with_data_root(raw: dict[str, Any], root: str) -> dict[str, Any]:
    """The study with ``data.root`` set wherever it reads a local data set (mnist,
    fashion_mnist, cifar10), e.g. to point the standard preset at your CIFAR-10.

    >>> with_data_root({"base": {"data": {"name": "cifar10"}}}, "/d")["base"]["data"]
    {'name': 'cifar10', 'root': '/d'}
    """
    from trajreg.train.data import LOCAL_DATASETS

    out = copy.deepcopy(raw)
    for section in [out.get("base", {}), *(b.get("base", {}) for b in out.get("blocks", []))]:
        data = section.get("data") if isinstance(section, dict) else None
        if isinstance(data, dict) and data.get("name") in LOCAL_DATASETS:
            data["root"] = root
    return out


def load_study(source: str | Path | dict[str, Any]) -> Study:
    """Validate a study file (path or mapping) completely and expand it into
    deduplicated runs: anything that would stop the study or its report later (a bad
    run config, a report eps some run does not analyse) is a ``ConfigError`` now."""
    raw = _mapping("study", read_yaml(source, "study"))
    if not raw:
        raise ConfigError("study: the study file is empty (give at least a base and a grid "
                          "or blocks)")
    for key in raw:
        if key not in STUDY_KEYS:
            allowed = ", ".join(sorted(STUDY_KEYS))
            raise ConfigError(f"{key}: unknown study key (allowed: {allowed})")
    if "blocks" in raw and "grid" in raw:
        raise ConfigError("grid: give either a top-level grid or blocks, not both")
    base = _mapping("base", raw.get("base", {}))
    seeds = raw.get("seeds", [0])
    report = ReportOptions.from_raw(_mapping("report", raw.get("report") or {}))
    if "blocks" in raw:
        blocks_raw = raw["blocks"]
        if not isinstance(blocks_raw, list) or not blocks_raw:
            raise ConfigError("blocks: must be a non-empty list of blocks")
        blocks = []
        for i, b in enumerate(blocks_raw):
            b = _mapping(f"blocks[{i}]", b)
            for key in b:
                if key not in BLOCK_KEYS:
                    raise ConfigError(f"blocks[{i}].{key}: unknown block key "
                                      f"(allowed: {', '.join(sorted(BLOCK_KEYS))})")
            if "name" not in b:
                raise ConfigError(f"blocks[{i}].name: every block needs a name")
            blocks.append(_block(f"blocks[{i}].", b, base, seeds, raw.get("compare")))
        names = [b.name for b in blocks]
        if len(set(names)) != len(names):
            raise ConfigError(f"blocks: repeated block name in {names}")
    else:
        blocks = [_block("", {"name": raw.get("name", "main"), "grid": raw.get("grid", {}),
                              "note": raw.get("note", "")}, base, seeds, raw.get("compare"))]
    study = Study(name=str(raw.get("name", "study")), blocks=blocks, raw=raw, report=report)
    order: list[str] = []
    found: dict[str, RunSpec] = {}
    for block in blocks:
        for config, axes in expand(block):
            rid = run_id(config)
            block.members.append((rid, axes, config["seed"]))
            if rid in found:
                spec = found[rid]
                if block.name not in spec.blocks:
                    found[rid] = dataclasses.replace(spec, blocks=(*spec.blocks, block.name))
                continue
            found[rid] = RunSpec(rid, config, (block.name,))
            order.append(rid)
    study.runs = [found[r] for r in order]
    study._by_id = found
    _check_runs(study)
    return study


def _check_runs(study: Study) -> None:
    """What the report needs of every run: the regularity analysis at the report's eps."""
    for block in study.blocks:
        for rid, _, _ in block.members:
            config = study.run(rid).config
            mode = config["record"]["mode"]
            if not get_mode(mode).measures:
                raise ConfigError(f"block {block.name}: record.mode: a study's report needs "
                                  f"the regularity analysis; {mode!r} records none")
            analysed = [float(e) for e in config["analysis"]["eps"]]
            if study.report.eps not in analysed:
                raise ConfigError(
                    f"report.eps: {study.report.eps:g} is not among the analysis.eps of "
                    f"block {block.name} ({', '.join(f'{e:g}' for e in analysed)}); add it "
                    "to analysis.eps or choose one of those")


def uses_kappa(axis: str) -> bool:
    """Whether comparisons along ``axis`` use kappa_hat (optimizer or lr) or gamma_hat.

    >>> uses_kappa("optim"), uses_kappa("optim.lr"), uses_kappa("model.norm")
    (True, True, False)
    """
    return axis == "optim" or axis.startswith(KAPPA_PREFIXES)


def label(value: Any) -> str:
    """A grid value as text: mappings as ``key=value`` pairs.

    >>> label({"name": "adam", "lr": 0.001}), label(True)
    ('name=adam lr=0.001', 'True')
    """
    if isinstance(value, dict):
        return " ".join(f"{k}={label(v)}" for k, v in value.items())
    return str(value)


BUILT_IN = ("paper", "transformer")  # the studies shipped in presets/<name>-<preset>.yaml
PRESETS_OF = ("quick", "standard")


def preset_path(preset: str, study: str = "paper") -> Path:
    """The study file of a built-in study (``paper``: the paper's; ``transformer``:
    today's transformer techniques) at a preset (quick, standard)."""
    if study not in BUILT_IN:
        raise UserError(f"unknown built-in study {study!r} ({', '.join(BUILT_IN)})")
    path = PRESETS / f"{study}-{preset}.yaml"
    if not path.is_file():
        raise UserError(f"--preset: unknown preset {preset!r} ({', '.join(PRESETS_OF)})")
    return path


def load_study_dir(study_dir: str | Path) -> Study:
    """The study a study directory was run with (its ``study.yaml``)."""
    return load_study(read_study_file(study_dir))
