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

A block (or the study itself) may take runs that already happened: ``series`` instead
of ``grid``, a list of checkpoint series measured as ``trajreg checkpoints`` does, each
one run of the block::

    blocks:
      - name: bn-from-checkpoints
        measure: {config: runs/bn-0/config.yaml, reference: final}
        series:
          - {path: runs/bn-0/checkpoints, seed: 0, model.norm: batch}
          - {path: runs/plain-0/checkpoints, seed: 0, model.norm: none,
             measure: {config: runs/plain-0/config.yaml}}   # merged over the block's
          ...
        compare: {model.norm: {without: none}}

Each entry has a ``path`` (a checkpoint, a directory of them, or a list), an optional
``seed`` (default 0), ``steps`` (one per path) and ``measure`` (merged over the
block's), and its axis values: any other key, dotted like a grid key
(``model.norm: batch``) or a free label (``technique: warmup``). The block's grid and
seeds are those of its entries, and every combination of axis values and seed must be
there exactly once. ``measure`` names the model and data (``config: RUN.yaml`` or a
mapping, ``entry: MODULE:FUNCTION``, or for Hugging Face folders ``text: FILE`` /
``tokens: FILE``), ``batches``, ``batch_size``, ``block_size``, ``threads`` (default 1)
and any ``CheckpointOptions`` field (``reference``, ``eps``, ``sketch_dim``,
``interval_points``, ...). Relative paths are resolved against the study file's
directory (the working directory for a mapping) and kept resolved in the study, so a
series' run id is the same wherever the study is started from. A series' run config is
``{"series": {paths, how it is measured, options}, "seed": S, <its axis values>}``; it
is compared by gamma_hat (the epochwise gamma, free of the learning rate) along every
axis, never kappa_hat.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajreg.checkpoints.measure import CheckpointOptions
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
STUDY_KEYS = {"name", "base", "grid", "seeds", "compare", "blocks", "note", "report",
              "series", "measure"}
BLOCK_KEYS = {"name", "base", "grid", "seeds", "compare", "note", "series", "measure"}
# a series entry's own keys; any other key of an entry is one of its axis values
ENTRY_KEYS = {"path", "seed", "steps", "measure"}
# measure keys that name files, resolved against the study file's directory
MEASURE_FILES = ("config", "entry", "text", "tokens")
MEASURE_KEYS = {*MEASURE_FILES, "batches", "batch_size", "block_size", "threads",
                *CheckpointOptions.__dataclass_fields__}
# sections of a series' run config that no axis may set
SERIES_RESERVED = ("series", "seed")
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
    # a block of checkpoint series: its run configs by point (``_point_key``), and the
    # block's measure section as given; None for a grid block
    series: dict[str, dict[str, Any]] | None = None
    measure: dict[str, Any] | None = None


def is_series(config: dict[str, Any]) -> bool:
    """Whether a run config is a checkpoint series (measured, not trained)."""
    return "series" in config


def analysed_eps(config: dict[str, Any]) -> list[float]:
    """The eps a run's analysis gives gamma_hat at: ``analysis.eps``, or a series'
    measure eps."""
    if is_series(config):
        return [float(e) for e in config["series"]["options"]["eps"]]
    return [float(e) for e in config["analysis"]["eps"]]


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


def _points(grid: dict[str, list[Any]], seeds: list[int]
            ) -> list[tuple[dict[str, Any], int]]:
    """(grid values, seed) of every point of a grid, in grid order, seeds innermost."""
    keys = list(grid)
    return [(dict(zip(keys, values, strict=True)), seed)
            for values in itertools.product(*(grid[k] for k in keys)) for seed in seeds]


def _point_key(axes: dict[str, Any], seed: int) -> str:
    return json.dumps([sorted(axes.items()), seed], sort_keys=True, default=str)


def _point_text(axes: dict[str, Any], seed: int) -> str:
    return ", ".join([*(f"{k}={label(v)}" for k, v in axes.items()), f"seed {seed}"])


def _resolve(root: Path, value: Any) -> Any:
    """A path given as text, absolute (``root`` joined to a relative one, normalised
    but links kept); anything else as it is, for the validation to name."""
    if not isinstance(value, str) or not value:
        return value
    return os.path.abspath(root / Path(value).expanduser())


def _resolve_measure(root: Path, measure: Any) -> Any:
    if not isinstance(measure, dict):
        return measure
    out = {k: _resolve(root, v) if k in ("config", "text", "tokens") else v
           for k, v in measure.items()}
    entry = out.get("entry")
    if isinstance(entry, str):
        module, sep, func = entry.rpartition(":")
        if sep and module.endswith(".py"):  # a file; a module name is imported as named
            out["entry"] = f"{_resolve(root, module)}:{func}"
    return out


def resolve_paths(raw: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """The study with every path of its checkpoint series (``path``, and the files a
    ``measure`` names) made absolute against ``root``: what the study directory keeps,
    so a report drawn later finds the same run ids."""
    root = Path(os.path.abspath(root))
    out = copy.deepcopy(raw)
    blocks = out.get("blocks")
    for block in [out, *(blocks if isinstance(blocks, list) else [])]:
        if not isinstance(block, dict):
            continue
        if "measure" in block:
            block["measure"] = _resolve_measure(root, block["measure"])
        entries = block.get("series")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            if "path" in entry:
                path = entry["path"]
                entry["path"] = ([_resolve(root, p) for p in path] if isinstance(path, list)
                                 else _resolve(root, path))
            if "measure" in entry:
                entry["measure"] = _resolve_measure(root, entry["measure"])
    return out


def _whole(where: str, value: Any, low: int, none: bool = False) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: must be a whole number >= {low}, got {value!r}")
    return value


def _series_config(entry: str, where: str, measure: dict[str, Any], paths: list[str],
                   steps: Any, check: bool) -> dict[str, Any]:
    """The ``series`` section of one series' run config: its paths, how the model and
    data are named, the measure's options with their defaults. With ``check`` the files
    are read as ``trajreg checkpoints`` would find them (not the checkpoints' tensors).
    ``entry`` and ``where`` name the entry and its measure section in messages."""
    from trajreg.checkpoints.series import find_checkpoints

    for key in measure:
        if key not in MEASURE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown measure key (allowed: "
                              f"{', '.join(sorted(MEASURE_KEYS))})")
    given = {k: measure[k] for k in MEASURE_FILES if measure.get(k) is not None}
    named = [k for k in ("config", "entry") if k in given]
    data = [k for k in ("text", "tokens") if k in given]
    if len(named) > 1 or len(data) > 1:
        both = named if len(named) > 1 else data
        raise ConfigError(f"{where}: {both[0]} and {both[1]} were both given; give one")
    if named and data:
        raise ConfigError(f"{where}.{data[0]}: text and tokens are for Hugging Face "
                          f"checkpoint folders; with {named[0]} the data come from it")
    if not given:
        raise ConfigError(f"{where}: name the model and data: config: RUN.yaml, entry: "
                          "MODULE:FUNCTION, or (Hugging Face checkpoint folders) text: "
                          "FILE or tokens: FILE")
    out: dict[str, Any] = {"paths": paths}
    if steps is not None:
        if not isinstance(steps, list) or len(steps) != len(paths):
            raise ConfigError(f"{entry}.steps: must be a list of one step per path "
                              f"({len(paths)}), got {steps!r}")
        out["steps"] = [_whole(f"{entry}.steps", s, 0) for s in steps]
    for key, value in given.items():
        if key == "config" and isinstance(value, dict):
            try:  # a run config given inline: kept resolved, like a grid run's
                out[key] = load_config(value).to_dict()
            except ConfigError as exc:
                raise ConfigError(f"{where}.config: {exc}") from None
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: must be a path"
                              + (" or a run config" if key == "config" else "")
                              + f", got {value!r}")
        if key == "entry" and ":" not in value:
            raise ConfigError(f"{where}.entry: must be MODULE:FUNCTION or FILE.py:FUNCTION, "
                              f"got {value!r}")
        out[key] = value
        if not check:
            continue
        file = value.rpartition(":")[0] if key == "entry" else value
        if key == "entry" and not file.endswith(".py"):
            continue  # a module: imported when the series is measured
        if not Path(file).is_file():
            raise ConfigError(f"{where}.{key}: {file}: no such file")
        if key == "config":
            raw = dict(read_yaml(value, "config"))
            raw.pop("versions", None)  # a run directory's config.yaml
            try:
                load_config(raw)
            except ConfigError as exc:
                raise ConfigError(f"{where}.config: {value}: {exc}") from None
    out["batches"] = _whole(f"{where}.batches", measure.get("batches"), 1, none=True)
    out["batch_size"] = _whole(f"{where}.batch_size", measure.get("batch_size", 8), 1)
    out["block_size"] = _whole(f"{where}.block_size", measure.get("block_size"), 1,
                               none=True)
    out["threads"] = _whole(f"{where}.threads", measure.get("threads", DEFAULT_THREADS), 1)
    fields = CheckpointOptions.__dataclass_fields__
    options = {k: v for k, v in measure.items() if k in fields}
    if isinstance(options.get("eps"), int | float):  # one eps, as analysis.eps takes it
        options["eps"] = [options["eps"]]
    out["options"] = CheckpointOptions.from_dict(options, where).to_dict()
    if check:
        try:
            find_checkpoints(paths, out.get("steps"))
        except UserError as exc:
            raise ConfigError(f"{entry}.path: {exc}") from None
    return out


def _series_block(where: str, raw: dict[str, Any], compare: Any, check: bool) -> Block:
    """A block of checkpoint series: its grid and seeds from the entries, every point
    once, and each entry's run config."""
    name = str(raw.get("name", "main"))
    for key in ("grid", "base", "seeds"):
        if key in raw:
            raise ConfigError(f"{where}{key}: a block of checkpoint series takes its axes "
                              f"and seeds from its series entries; give no {key}")
    entries = raw["series"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}series: must be a non-empty list of series "
                          "({path: ..., seed: ..., AXIS: VALUE, ...})")
    measure = _mapping(f"{where}measure", _or_empty(raw.get("measure")))
    keys: list[str] | None = None
    points: dict[str, tuple[int, dict[str, Any], int, dict[str, Any]]] = {}
    grid: dict[str, list[Any]] = {}
    seeds: list[int] = []
    for i, entry in enumerate(entries):
        w = f"{where}series[{i}]"
        entry = _mapping(w, entry)
        path = entry.get("path")
        given = path if isinstance(path, list) else [path]
        if not given or not all(isinstance(p, str) and p for p in given):
            raise ConfigError(f"{w}.path: must be a checkpoint, a directory of them, or a "
                              f"list of them, got {path!r}")
        paths = [str(p) for p in given]
        seed = entry.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{w}.seed: must be an integer >= 0, got {seed!r}")
        axes = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
        for key in axes:
            if key.split(".")[0] in SERIES_RESERVED:
                raise ConfigError(f"{w}.{key}: not an axis name (series and seed are the "
                                  "series' own)")
        if keys is None:
            keys = list(axes)
            grid = {k: [] for k in keys}
        elif set(axes) != set(keys):
            raise ConfigError(f"{w}: axes {sorted(axes)} differ from series[0]'s "
                              f"{sorted(keys)}; every series of a block names the same axes")
        axes = {k: axes[k] for k in keys}
        for k, v in axes.items():
            if not any(_same(v, u) for u in grid[k]):
                grid[k].append(v)
        if seed not in seeds:
            seeds.append(seed)
        point = _point_key(axes, seed)
        if point in points:
            raise ConfigError(f"{where}series (block {name}): {_point_text(axes, seed)} is "
                              f"given twice (series[{points[point][0]}] and series[{i}]); "
                              "each combination of axis values and seed once")
        own = _mapping(f"{w}.measure", _or_empty(entry.get("measure")))
        series = _series_config(w, f"{w}.measure" if own else f"{where}measure",
                                merge(measure, own), paths, entry.get("steps"), check)
        config: dict[str, Any] = {"series": series, "seed": seed}
        for k, v in axes.items():
            set_dotted(config, k, v)
        points[point] = (i, axes, seed, config)
    seeds.sort()
    for axes, seed in _points(grid, seeds):
        if _point_key(axes, seed) not in points:
            raise ConfigError(
                f"{where}series (block {name}): no series for {_point_text(axes, seed)}; "
                "every combination of the axis values and seeds needs one ("
                + "; ".join(f"{k}: {', '.join(label(v) for v in vs)}" for k, vs in grid.items())
                + f"; seeds {', '.join(map(str, seeds))})")
    return Block(name=name, base={}, grid=grid, seeds=seeds,
                 compare=_compare(f"{where}compare", raw.get("compare", compare), grid),
                 note=str(raw.get("note", "")),
                 series={key: c for key, (_, _, _, c) in points.items()}, measure=measure)


def _or_empty(value: Any) -> Any:
    return {} if value is None else value  # an empty YAML section


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                     default=str)


def expand(block: Block) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(resolved run config, grid values) for every grid point and seed of a block.

    Each config is validated as a run config, so a bad value stops the study
    before anything runs, with the message naming the block and key.
    """
    if block.series is not None:  # validated as the block was read
        return [(block.series[_point_key(axes, seed)], axes)
                for axes, seed in _points(block.grid, block.seeds)]
    out = []
    for axes, seed in _points(block.grid, block.seeds):
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


def load_study(source: str | Path | dict[str, Any], *, root: str | Path | None = None,
               check_files: bool = True) -> Study:
    """Validate a study file (path or mapping) completely and expand it into
    deduplicated runs: anything that would stop the study or its report later (a bad
    run config, a report eps some run does not analyse) is a ``ConfigError`` now.

    Checkpoint series' relative paths resolve against ``root`` (default: the study
    file's directory, or the working directory for a mapping); ``Study.raw`` keeps them
    resolved. ``check_files``: their checkpoints and files must be there (off for a
    study directory's report, which needs only its run directories)."""
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
    if "series" in raw:
        for key in ("blocks", "grid", "base", "seeds"):
            if key in raw:
                raise ConfigError(f"{key}: a study of checkpoint series takes its axes and "
                                  f"seeds from its series entries; give no {key} (or put "
                                  "the series in a block)")
    elif "measure" in raw:
        raise ConfigError("measure: only with series (a block's, or the study's own)")
    if root is None:
        root = Path(source).parent if isinstance(source, str | Path) else Path.cwd()
    raw = resolve_paths(raw, root)
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
            if "series" in b:
                blocks.append(_series_block(f"blocks[{i}].", b, raw.get("compare"),
                                            check_files))
                continue
            if "measure" in b:
                raise ConfigError(f"blocks[{i}].measure: only with series")
            blocks.append(_block(f"blocks[{i}].", b, base, seeds, raw.get("compare")))
        names = [b.name for b in blocks]
        if len(set(names)) != len(names):
            raise ConfigError(f"blocks: repeated block name in {names}")
    elif "series" in raw:
        blocks = [_series_block("", {k: raw[k] for k in ("name", "series", "measure", "note")
                                     if k in raw}, raw.get("compare"), check_files)]
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
            series = is_series(config)
            if not series:
                mode = config["record"]["mode"]
                if not get_mode(mode).measures:
                    raise ConfigError(f"block {block.name}: record.mode: a study's report "
                                      f"needs the regularity analysis; {mode!r} records none")
            analysed = analysed_eps(config)
            if study.report.eps not in analysed:
                where = "measure.eps" if series else "analysis.eps"
                raise ConfigError(
                    f"report.eps: {study.report.eps:g} is not among the {where} of "
                    f"block {block.name} ({', '.join(f'{e:g}' for e in analysed)}); add it "
                    f"to {where} or choose one of those")


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
    """The study a study directory was run with (its ``study.yaml``; its series' paths
    were kept resolved, and need not exist any more)."""
    return load_study(read_study_file(study_dir), check_files=False)
