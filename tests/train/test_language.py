"""The token sets (``text``, ``modular``) and the language task of the loop: the corpus,
its vocabulary and windows, the modular set, their config keys, the loss and metrics,
their sizes, and a tiny real language model trained on the real pydoc corpus.

The tiny model (a bigram table) lives here, not in the library: the loop's language
task is tested end to end before the library has a sequence model."""

from __future__ import annotations

import collections
import hashlib
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from tests.conftest import tiny
from trajreg import cli
from trajreg.errors import ConfigError, UserError
from trajreg.train import data as data_mod
from trajreg.train import models, size
from trajreg.train.config import DataConfig, load_config
from trajreg.train.data import (
    DEFAULT_BLOCK_SIZE,
    IGNORE_INDEX,
    PYDOC_CORPUS,
    encode,
    load_data,
    planned_classes,
    planned_size,
)
from trajreg.train.loop import (
    batches,
    build,
    derive_seed,
    evaluate,
    full_loss,
    minibatch_loss,
    steps_per_epoch,
    total_steps,
    train,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


class Bigram(nn.Module):
    """A real language model, the smallest: the next token's logits from this one."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x)


@pytest.fixture
def bigram(monkeypatch):
    """``model: {name: bigram}`` for the duration of a test."""
    monkeypatch.setitem(models.MODELS, "bigram", lambda cfg, shape, n: Bigram(n))
    return "bigram"


def _pydoc() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def _run_cfg(data: dict, **sections):
    return load_config(tiny(data=data, model={"name": "bigram", "norm": "none"},
                            optim={"name": "adam", "lr": 0.1}, **sections))


# ---------------------------------------------------------------- the corpus


def test_pydoc_corpus_is_the_one_documented():
    text = _pydoc()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    version, chars, sha = PYDOC_CORPUS
    docs = DOCS.read_text()
    assert f"Python {version}" in docs and f"{chars:,}" in docs and sha in docs
    import platform

    if platform.python_version() != version:
        pytest.skip(f"the documented corpus is Python {version}'s")
    assert (len(text), digest) == (chars, sha)
    d = load_data(DataConfig(name="text"))
    assert d.facts["sha256"] == sha and d.facts["characters"] == chars


def test_another_pythons_corpus_warns_and_is_recorded(monkeypatch):
    monkeypatch.setattr(data_mod, "PYDOC_CORPUS", ("0.0.0", 1, "0" * 64))
    data_mod._pydoc_text.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"^data\.name: text: this Python's pydoc_data "
                                             r"text \(\d+ characters, sha256 [0-9a-f]{12}\) "
                                             r"is not the corpus docs/data\.md records"):
            d = load_data(DataConfig(name="text"))
    finally:
        data_mod._pydoc_text.cache_clear()
    assert d.facts["sha256"] == hashlib.sha256(_pydoc().encode()).hexdigest()


def test_split_vocabulary_and_windows_of_the_corpus():
    text = _pydoc()
    d = load_data(DataConfig(name="text", test_fraction=0.25))
    n_test = round(0.25 * len(text))
    train_text, test_text = text[:-n_test], text[-n_test:]
    vocab = "".join(sorted(set(train_text)))  # from the training split only
    assert d.facts["vocab"] == vocab and d.n_classes == len(vocab) + 1
    assert d.facts["unknown_id"] == len(vocab)
    T = DEFAULT_BLOCK_SIZE
    assert d.x_train.shape == (len(train_text) - T, T) and d.x_train.dtype == torch.int64
    # every start position a window, the targets the next characters
    for i in (0, 1, 12345, len(d.x_train) - 1):
        assert "".join(vocab[t] for t in d.x_train[i]) == train_text[i : i + T]
        assert "".join(vocab[t] for t in d.y_train[i]) == train_text[i + 1 : i + T + 1]
    # views of one stream, not T copies of the corpus
    assert d.x_train.stride() == (1, 1) and d.y_train.stride() == (1, 1)
    assert d.x_train.untyped_storage().data_ptr() == d.y_train.untyped_storage().data_ptr()
    assert d.x_train.untyped_storage().nbytes() == 8 * len(train_text)
    # evaluation: every non-overlapping window of each split
    x_eval, y_eval = d.eval_train
    assert len(x_eval) == d.epoch_examples == (len(train_text) - 1) // T
    assert torch.equal(x_eval.reshape(-1), d.x_train[::T][: len(x_eval)].reshape(-1))
    assert len(d.x_test) == (len(test_text) - 1) // T
    assert "".join(vocab[t] for t in d.x_test[2]) == test_text[2 * T : 3 * T]
    assert "".join(vocab[t] for t in d.y_test[2]) == test_text[2 * T + 1 : 3 * T + 1]


def test_unknown_test_characters_and_a_local_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcab" * 20 + "xyzéq" * 5, encoding="utf-8")  # 100 + 25 characters
    d = load_data(DataConfig(name="text", file=str(path), batch_size=2, test_fraction=0.2),
                  block_size=8)
    assert d.facts["vocab"] == "abc" and d.facts["unknown_id"] == 3 and d.n_classes == 4
    assert d.facts["test_unknown"] == 25
    assert set(d.x_test.unique().tolist()) == {3}
    assert d.facts["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert d.x_train.shape == (100 - 8, 8) and d.epoch_examples == 99 // 8


def test_encode_against_a_brute_force_lookup():
    vocab = "".join(sorted(set("hello, wörld")))
    text = "hold the wörld, zoë! \U0001F600"
    expected = [vocab.index(c) if c in vocab else len(vocab) for c in text]
    assert encode(text, vocab).tolist() == expected
    assert encode("", vocab).tolist() == []


def test_subset_keeps_the_first_windows():
    d = load_data(DataConfig(name="text", subset=10, batch_size=4), block_size=16)
    assert d.epoch_examples == 10 and len(d.x_train) == 10 * 16 + 1 - 16
    full = load_data(DataConfig(name="text"))
    assert d.facts["vocab"] == full.facts["vocab"]  # the split's, not the subset's


# ---------------------------------------------------------------- windows and epochs


def test_windows_are_reproducible_from_the_seed():
    cfg = load_config(tiny(data={"name": "text", "batch_size": 8, "subset": 40},
                           train={"epochs": 2}))
    d = load_data(cfg.data)
    got = list(batches(cfg, d))
    assert [(s, e) for s, e, _ in got] == [(s, 1 + s // 5) for s in range(10)]
    assert steps_per_epoch(cfg, d) == 40 // 8 == 5 and total_steps(cfg, d) == 10
    for step, epoch, idx in got:  # each step's starts from its own generator
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, 1, epoch, step))
        assert torch.equal(idx, torch.randint(len(d.x_train), (8,), generator=g))
    again = list(batches(cfg, d))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(got, again, strict=True))
    cfg.seed = 1
    assert not torch.equal(next(iter(batches(cfg, d)))[2], got[0][2])


def test_an_epoch_of_the_full_corpus():
    cfg = load_config(tiny(data={"name": "text", "batch_size": 32, "subset": None}))
    d = load_data(cfg.data, block_size=128)
    n_train = len(_pydoc()) - round(0.2 * len(_pydoc()))
    assert d.epoch_examples == (n_train - 1) // 128
    assert steps_per_epoch(cfg, d) == (n_train - 1) // 128 // 32
    assert planned_size(cfg.data, 128) == d.size
    assert planned_classes(cfg.data, 128) == d.n_classes


# ---------------------------------------------------------------- modular


@pytest.mark.parametrize(("p", "fraction"), [(97, None), (7, 0.3), (2, 0.75)])
def test_modular_counts_tokens_targets_and_split(p, fraction):
    d = load_data(DataConfig(name="modular", p=p, train_fraction=fraction, batch_size=1))
    n_train = round((0.5 if fraction is None else fraction) * p * p)
    assert (len(d.x_train), len(d.x_test)) == (n_train, p * p - n_train)
    assert d.n_classes == p + 1 and d.task == "language" and d.sampling == "permutation"
    x, y = torch.cat([d.x_train, d.x_test]), torch.cat([d.y_train, d.y_test])
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (p * p, 3)
    assert (x[:, 2] == p).all() and (y[:, :2] == IGNORE_INDEX).all()
    assert torch.equal(y[:, 2], (x[:, 0] + x[:, 1]) % p)
    # every (a, b) exactly once across the splits, so the splits are disjoint
    pairs = sorted(map(tuple, x[:, :2].tolist()))
    assert pairs == [(a, b) for a in range(p) for b in range(p)]
    again = load_data(DataConfig(name="modular", p=p, train_fraction=fraction, batch_size=1))
    assert torch.equal(again.x_test, d.x_test)  # a fixed split
    assert planned_size(DataConfig(name="modular", p=p, train_fraction=fraction)) == d.size


def test_modular_sequences_need_three_positions():
    with pytest.raises(ConfigError, match=r"^model\.block_size: modular's sequences are 3 "):
        load_data(DataConfig(name="modular"), block_size=2)


# ---------------------------------------------------------------- config keys


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "text", "p": 5}, "data.p: only for modular, not text"),
    ({"name": "digits", "file": "x.txt"}, "data.file: only for text, not digits"),
    ({"name": "text", "train_fraction": 0.5}, "data.train_fraction: only for modular, not text"),
    ({"name": "modular", "p": 1}, "data.p: must be >= 2, got 1"),
    ({"name": "modular", "train_fraction": 1.0}, "data.train_fraction: must be in (0, 1), got 1.0"),
    ({"name": "modular", "train_fraction": 0}, "data.train_fraction: must be in (0, 1), got 0.0"),
    ({"name": "modular", "resize": 8}, "data.resize: modular holds token sequences, not images"),
    ({"name": "text", "root": "/data"}, "data.root: text reads no files under a root"),
    ({"name": "text", "file": ""}, "data.file: must name a file, got ''"),
    ({"name": "text", "vocab": 3}, "data.vocab: unknown key"),
])
def test_bad_data_keys_exit_2_with_one_line(tmp_path, capsys, data, message):
    with pytest.raises(ConfigError) as info:
        load_config(tiny(data=data))
    assert str(info.value).startswith(message)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data=data)))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"trajreg: error: {message}")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("content", "message"), [
    (None, "data.file: cannot read {path}: No such file or directory"),
    ("dir", "data.file: {path} is a directory, not a text file"),
    (b"", "data.file: {path} is empty"),
    (b"ab\xffcd", "data.file: {path} is not UTF-8 text (byte 2: invalid start byte)"),
])
def test_a_bad_file_exits_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "corpus.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(message.format(path=path))):
        load_data(DataConfig(name="text", file=str(path)))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(data={"name": "text", "file": str(path)})))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"trajreg: error: {message.format(path=path)}"
    assert not (tmp_path / "r").exists()


def test_a_corpus_shorter_than_a_batch_of_windows(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh" * 10)
    with pytest.raises(ConfigError, match=r"^model\.block_size: 64 is too long for the "
                                          r"text's training split of 64 characters "):
        load_data(DataConfig(name="text", file=str(path)))
    with pytest.raises(ConfigError, match=r"^data\.batch_size: 64 exceeds the 1 training "
                                          r"windows of 32 characters of text \(64 "):
        load_data(DataConfig(name="text", file=str(path)), block_size=32)


# ---------------------------------------------------------------- loss and metrics


def test_language_loss_and_metrics_against_brute_force(bigram):
    cfg = _run_cfg({"name": "modular", "p": 5, "batch_size": 4})
    d = load_data(cfg.data)
    model, _, _ = build(cfg, d)
    with torch.no_grad():
        logits = model(d.x_train).double()
    logp = logits.log_softmax(-1)
    # only the answer position counts: -log p(c | a, b, =)
    nll = -logp[:, 2].gather(1, d.y_train[:, 2:]).squeeze(1)
    assert full_loss(cfg, model, d) == pytest.approx(nll.mean().item(), rel=1e-6)
    idx = torch.tensor([3, 0, 7, 1])
    assert minibatch_loss(cfg, model, d, idx, 0).item() == pytest.approx(
        nll[idx].mean().item(), rel=1e-6)
    ev = evaluate(cfg, model, d)
    assert set(ev) == {f"{s}_{k}" for s in ("train", "test") for k in ("loss", "bpc",
                                                                       "accuracy")}
    assert ev["train_bpc"] == pytest.approx(ev["train_loss"] / math.log(2))
    correct = (logits[:, 2].argmax(-1) == d.y_train[:, 2]).double().mean().item()
    assert ev["train_accuracy"] == pytest.approx(correct)


def test_a_bigram_learns_the_real_corpus_below_its_unigram_entropy(bigram, one_thread):
    cfg = _run_cfg({"name": "text", "batch_size": 32, "subset": 1600},
                   train={"epochs": 1})
    d = load_data(cfg.data)
    chars = collections.Counter(d.eval_train[1].reshape(-1).tolist())  # the targets
    n = sum(chars.values())
    unigram = -sum(c / n * math.log(c / n) for c in chars.values())  # nats per character
    model, opt, sched = build(cfg, d)
    log = train(cfg, d, model, opt, sched, progress=False)
    assert log.steps == 50 and log.full_loss[0] > unigram
    assert log.full_loss[-1] < unigram - 0.3, (log.full_loss, unigram)


# ---------------------------------------------------------------- sizes


def test_sizes_count_int64_tokens_once():
    T = 32
    d = load_data(DataConfig(name="text"), block_size=T)
    s = d.size
    assert (s.input_bytes, s.views, s.input_shape) == (8, True, (T,))
    stream = d.x_train.untyped_storage().nbytes() + d.x_test.untyped_storage().nbytes()
    assert abs(s.nbytes - stream) <= 2 * 8 * (T + 1)  # a partial window per split
    assert s.describe() == f"{s.n_train}+{s.n_test} windows of {T} int64"
    m = load_data(DataConfig(name="modular", p=11, batch_size=8))
    made = sum(t.numel() * t.element_size() for t in (m.x_train, m.y_train, m.x_test,
                                                       m.y_test))
    assert m.size.nbytes == made


def test_model_size_takes_token_inputs(bigram):
    cfg = _run_cfg({"name": "text", "batch_size": 4})
    est = size.estimate_run_memory(cfg)
    V = planned_classes(cfg.data)
    assert est.n_params == V * V
    # one train batch: the int64 input and the (4, 64, V) float32 logits
    m = size.model_size(cfg.model, (64,), V, 4, torch.int64)
    assert m.train_activation_bytes == 8 * 4 * 64 + 4 * 4 * 64 * V
    assert size.meta_leaf_output_shapes(Bigram(V).to("meta"), (4, 64), torch.int64) == \
        [(4, 64, V)]
    assert size.estimate_run_steps(cfg).steps == cfg.train.epochs * (512 // 4)
