"""The data layer on real data and real files: bundled, generated and local formats."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import tiny
from trajreg.errors import ConfigError, UserError
from trajreg.train import data as data_mod
from trajreg.train.config import DataConfig, load_config
from trajreg.train.data import (
    DATASETS,
    LOCAL_DATASETS,
    Dataset,
    _resize_masks,
    load_data,
    read_idx,
)

ROOT = Path(__file__).resolve().parents[2]
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

EXPECTED = {  # name: (x_train, y_train, x_test, y_test, n_classes, task)
    "digits": ([1438, 1, 8, 8], [1438], [359, 1, 8, 8], [359], 10, "classification"),
    "mnist1d": ([4000, 1, 40], [4000], [1000, 1, 40], [1000], 10, "classification"),
    "mnist5k": ([4000, 1, 28, 28], [4000], [1000, 1, 28, 28], [1000], 10, "classification"),
    "shapes": ([2000, 1, 32, 32], [2000, 32, 32], [500, 1, 32, 32], [500, 32, 32], 4,
               "segmentation"),
}


def _cfg(name: str, **kw) -> DataConfig:
    kw.setdefault("batch_size", 8)
    return DataConfig(name=name, **kw)


def _raw(name: str, **kw) -> Dataset:
    return load_data(_cfg(name, normalize=False, **kw))


# ---------------------------------------------------------------- registry


def test_registry_and_config_names():
    assert set(DATASETS) == {"digits", "mnist1d", "mnist5k", "shapes", "mnist",
                             "fashion_mnist", "cifar10", "text", "modular"}
    assert set(LOCAL_DATASETS) == {"mnist", "fashion_mnist", "cifar10"}
    for name in DATASETS:
        assert load_config(tiny(data={"name": name})).data.name == name


# ---------------------------------------------------------------- offline sets


def test_offline_sets_load_with_networking_disabled(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("'unshare -n' is not permitted here (needs root or user namespaces)")
    script = textwrap.dedent("""
        import json, socket
        from trajreg.train.config import DataConfig
        from trajreg.train.data import load_data
        out = {"interfaces": sorted(name for _, name in socket.if_nameindex())}
        for name in ("digits", "mnist1d", "mnist5k", "shapes"):
            d = load_data(DataConfig(name=name))
            out[name] = [list(d.x_train.shape), list(d.y_train.shape), list(d.x_test.shape),
                         list(d.y_test.shape), d.n_classes, d.task]
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", script], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("interfaces") == ["lo"]  # really no network in there
    assert out == {name: list(v) for name, v in EXPECTED.items()}
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_dataset_tensors_and_interface():
    d = load_data(_cfg("digits"))
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert all(t.is_contiguous() for t in (d.x_train, d.y_train, d.x_test, d.y_test))
    assert d.input_shape == (1, 8, 8) and d.task == "classification"
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.n_classes = 3
    # the task defaults to classification for code that builds a Dataset itself
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    assert Dataset("toy", x, y, x, y, 2).task == "classification"
    assert "x_train" not in repr(d)  # no tensor dumps in logs


def test_mnist1d_leaves_global_rng_and_cwd_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_mod._mnist1d_arrays.cache_clear()  # really generate, not a cached copy
    random.seed(123)
    np.random.seed(456)
    py_state, np_state = random.getstate(), np.random.get_state()
    d = _raw("mnist1d")
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    assert list(tmp_path.iterdir()) == []
    # it is the package's own default MNIST-1D, with its own train/test split
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    assert torch.equal(d.x_train[:, 0], torch.from_numpy(ref["x"].astype(np.float32)))
    assert torch.equal(d.y_test, torch.from_numpy(ref["y_test"].astype(np.int64)))


@pytest.mark.parametrize("name", ["mnist1d", "digits", "shapes"])
def test_callers_cannot_mutate_the_cache(name):
    first = _raw(name)
    x, y = first.x_train.clone(), first.y_train.clone()
    first.x_train.zero_()
    first.y_train.fill_(1)
    first.x_test.zero_()
    again = _raw(name)
    assert torch.equal(again.x_train, x) and torch.equal(again.y_train, y)
    assert again.x_test.abs().sum() > 0


def test_mnist5k_pixels_and_labels():
    d = _raw("mnist5k")
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    pixels = d.x_train * 255
    assert torch.equal(pixels, pixels.round())  # whole 8-bit values, scaled
    counts = torch.bincount(torch.cat([d.y_train, d.y_test]), minlength=10)
    assert counts.tolist() == [500] * 10


def test_shapes_is_deterministic_segmentation():
    d = _raw("shapes")
    assert d.task == "segmentation" and d.n_classes == 4
    assert d.y_train.dtype == torch.int64
    counts = torch.bincount(d.y_train.flatten(), minlength=4)
    assert len(counts) == 4 and (counts[1:] > 0.03 * d.y_train.numel()).all()
    # background pixels are darker than shape pixels on average, but noisy
    fg = d.y_train > 0
    x = d.x_train[:, 0]
    assert x[fg].mean() > x[~fg].mean() + 0.3
    assert x[~fg].std() > 0.1
    again = _shapes_regenerated()
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)


def _shapes_regenerated() -> Dataset:
    data_mod._shapes_arrays.cache_clear()
    np.random.seed(7)  # the global generator plays no part
    torch.manual_seed(7)
    return _raw("shapes")


# ---------------------------------------------------------------- options


def test_split_is_fixed_and_disjoint():
    np.random.seed(1)
    torch.manual_seed(1)
    a = _raw("digits")
    np.random.seed(2)
    torch.manual_seed(2)
    b = _raw("digits", subset=50)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert torch.equal(a.x_train[:50], b.x_train)  # subset: the first N after the split
    # train and test together are the whole set, each image exactly once
    from sklearn.datasets import load_digits

    full = np.sort(load_digits().images.reshape(len(a.x_train) + len(a.x_test), -1) / 16, 0)
    both = torch.cat([a.x_train, a.x_test]).reshape(len(full), -1).numpy()
    assert np.allclose(np.sort(both, 0), full)
    half = _raw("digits", test_fraction=0.5)
    assert len(half.x_test) == 898 and len(half.x_train) == 899


def test_subset_on_sets_with_their_own_split():
    full, sub = _raw("mnist1d"), _raw("mnist1d", subset=300)
    assert torch.equal(sub.x_train, full.x_train[:300])
    assert torch.equal(sub.x_test, full.x_test)  # the test set is never cut


def test_batch_size_must_fit_the_training_set():
    with pytest.raises(ConfigError, match=r"^data\.batch_size: 64 exceeds the 10 training"):
        load_data(_cfg("digits", subset=10, batch_size=64))
    assert len(load_data(_cfg("digits", subset=10, batch_size=10)).x_train) == 10


def test_resize_images_and_generated_masks():
    d = load_data(_cfg("digits", resize=16))
    assert d.input_shape == (1, 16, 16)
    s = _raw("shapes", resize=24)
    assert s.input_shape == (1, 24, 24) and tuple(s.y_train.shape) == (2000, 24, 24)
    assert s.y_train.dtype == torch.int64
    assert set(torch.unique(s.y_train).tolist()) == {0, 1, 2, 3}
    # the same scenes at another side: the class fractions barely change
    base = _raw("shapes")
    frac = [torch.bincount(t.flatten(), minlength=4) / t.numel() for t in (s.y_train,
                                                                            base.y_train)]
    assert torch.allclose(frac[0], frac[1], atol=0.01)
    with pytest.raises(ConfigError, match=r"^data\.resize: mnist1d"):
        _cfg("mnist1d", resize=16).validate()  # the config knows the set holds signals


def test_resize_masks_nearest_keeps_classes():
    masks = np.random.default_rng(0).integers(0, 4, size=(3, 8, 8))
    up = _resize_masks(masks, 16)
    assert up.dtype == np.int64 and up.shape == (3, 16, 16)
    assert np.array_equal(up, masks.repeat(2, axis=1).repeat(2, axis=2))
    down = _resize_masks(masks, 5)
    assert set(np.unique(down)) <= set(np.unique(masks))


def test_normalize_uses_training_statistics():
    raw, norm = _raw("mnist5k"), load_data(_cfg("mnist5k"))
    assert abs(norm.x_train.mean().item()) < 1e-4
    assert abs(norm.x_train.std().item() - 1) < 1e-3
    mean, std = raw.x_train.double().mean(), raw.x_train.double().std(unbiased=False)
    expected = ((raw.x_test.double() - mean) / (std + 1e-6)).float()
    assert torch.allclose(norm.x_test, expected, atol=1e-5)
    assert abs(norm.x_test.mean().item()) > 1e-4  # the test set's own statistics are not used


# ---------------------------------------------------------------- local files


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file written by hand: magic (0, 0, 0x08, ndim), big-endian dims, bytes."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_idx_set(folder: Path, gz: bool | str, n_train=40, n_test=12, side=28, seed=0):
    """Random images and labels in the four MNIST files; gz='mixed': some gzipped."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
              rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
              rng.integers(0, 10, n_test, dtype=np.uint8)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, array) in enumerate(zip(IDX_NAMES, arrays, strict=True)):
        zipped = gz is True or (gz == "mixed" and i % 2 == 0)
        write_idx(folder / (name + ".gz" if zipped else name), array)
    return arrays


@pytest.mark.parametrize("name, layout, gz", [
    ("mnist", "", False),
    ("mnist", "MNIST/raw", True),
    ("fashion_mnist", "FashionMNIST/raw", False),
    ("fashion_mnist", "", "mixed"),
])
def test_idx_files_round_trip(tmp_path, name, layout, gz):
    xs, ys, xt, yt = make_idx_set(tmp_path / layout if layout else tmp_path, gz)
    d = _raw(name, root=str(tmp_path))
    assert d.input_shape == (1, 28, 28) and d.n_classes == 10
    assert torch.equal(d.x_train, torch.from_numpy(xs[:, None].astype(np.float32) / 255))
    assert torch.equal(d.x_test, torch.from_numpy(xt[:, None].astype(np.float32) / 255))
    assert d.y_train.tolist() == ys.tolist() and d.y_test.tolist() == yt.tolist()
    small = load_data(_cfg(name, root=str(tmp_path), resize=14, subset=20))
    assert tuple(small.x_train.shape) == (20, 1, 14, 14) and small.x_test.shape[2:] == (14, 14)


def test_read_idx_other_types_and_root_with_tilde(tmp_path, monkeypatch):
    values = (np.arange(24).reshape(2, 3, 4) - 7).astype(">i2")  # big-endian int16
    (tmp_path / "a.idx").write_bytes(bytes([0, 0, 0x0B, 3]) + b"".join(
        n.to_bytes(4, "big") for n in (2, 3, 4)) + values.tobytes())
    assert np.array_equal(read_idx(tmp_path / "a.idx"), values)
    monkeypatch.setenv("HOME", str(tmp_path))
    make_idx_set(tmp_path / "data", gz=False)
    assert len(_raw("mnist", root="~/data").x_train) == 40


def test_corrupt_idx_files_give_clear_errors(tmp_path):
    make_idx_set(tmp_path, gz=False)
    images = tmp_path / IDX_NAMES[0]
    good = images.read_bytes()
    images.write_bytes(good[:-5])  # truncated
    with pytest.raises(UserError, match="corrupt IDX file: header says \\(40, 28, 28\\)") as e:
        _raw("mnist", root=str(tmp_path))
    assert str(images) in str(e.value)
    images.write_bytes(b"\x12\x34" + good[2:])  # bad magic number
    with pytest.raises(UserError, match="not an IDX file"):
        _raw("mnist", root=str(tmp_path))
    images.write_bytes(good)
    images.rename(tmp_path / (IDX_NAMES[0] + ".gz"))  # "gzipped", but it is not
    with pytest.raises(UserError, match="cannot read"):
        _raw("mnist", root=str(tmp_path))
    (tmp_path / (IDX_NAMES[0] + ".gz")).rename(images)
    labels = tmp_path / IDX_NAMES[1]
    write_idx(labels, np.full(39, 3, dtype=np.uint8))  # one label short
    with pytest.raises(UserError, match="expected 40 labels"):
        _raw("mnist", root=str(tmp_path))
    write_idx(labels, np.full(40, 10, dtype=np.uint8))  # no class 10 in MNIST
    with pytest.raises(UserError, match=r"labels must be in 0\.\.9"):
        _raw("mnist", root=str(tmp_path))


def write_cifar(folder: Path, n=6, seed=0):
    """The six CIFAR-10 python batches: pickled dicts with bytes keys, uint8 (n, 3072)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", ""])
def test_cifar_batches_round_trip(tmp_path, layout):
    batches = write_cifar(tmp_path / layout if layout else tmp_path)
    d = _raw("cifar10", root=str(tmp_path))
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert d.input_shape == (3, 32, 32) and len(d.x_train) == 30 and len(d.x_test) == 6
    expected = train.reshape(30, 3, 32, 32).astype(np.float32) / 255
    assert torch.equal(d.x_train, torch.from_numpy(expected))
    # channel planes: the first 1024 bytes of a row are the red image, row-major
    pixels = (d.x_train * 255).round().to(torch.uint8)
    assert pixels[0, 0, 0, 1] == train[0, 1] and pixels[0, 2, 31, 31] == train[0, 3071]
    assert d.y_train.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert d.y_test.tolist() == batches["test_batch"][1]
    norm = load_data(_cfg("cifar10", root=str(tmp_path), resize=16))
    assert norm.input_shape == (3, 16, 16)
    assert torch.allclose(norm.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(norm.x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3),
                          atol=1e-4)


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Sneaky(), b"labels": []}, f, protocol=2)
    with pytest.raises(UserError, match=r"test_batch: not a CIFAR-10 python batch: refusing"):
        _raw("cifar10", root=str(tmp_path))


@pytest.mark.parametrize("name, files, subdir", [
    ("mnist", IDX_NAMES, "MNIST/raw"),
    ("fashion_mnist", IDX_NAMES, "FashionMNIST/raw"),
    ("cifar10", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
     "cifar-10-batches-py"),
])
def test_absent_local_data_names_set_and_files(tmp_path, name, files, subdir):
    with pytest.raises(UserError) as e:
        load_data(_cfg(name, root=str(tmp_path)))
    msg = str(e.value)
    assert msg.startswith(f"data.root: {name} files not found; looked for ")
    assert all(f in msg for f in files) and str(tmp_path / subdir) in msg
    with pytest.raises(UserError) as e:
        load_data(_cfg(name))  # no root at all
    assert str(e.value).startswith("data.root:") and name in str(e.value)
    assert all(f in str(e.value) for f in files)


def test_incomplete_local_data_says_what_is_missing(tmp_path):
    make_idx_set(tmp_path / "MNIST/raw", gz=True)
    (tmp_path / "MNIST/raw" / (IDX_NAMES[3] + ".gz")).unlink()
    with pytest.raises(UserError, match=r"MNIST/raw lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        _raw("mnist", root=str(tmp_path))
    with pytest.raises(UserError, match="is not a directory"):
        _raw("mnist", root=str(tmp_path / "nope"))


def test_cli_exits_2_before_training_when_files_are_absent(tmp_path):
    (tmp_path / "empty").mkdir()
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"name": "mnist",
                                                "root": str(tmp_path / "empty")})))
    proc = subprocess.run([sys.executable, "-m", "trajreg.cli", "run", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trajreg: error: data.root: mnist files not found")
    assert all(f in lines[0] for f in IDX_NAMES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "empty"]
    assert list((tmp_path / "empty").iterdir()) == []
