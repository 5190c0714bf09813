"""``trajreg checkpoints`` on series the frameworks' own trainers wrote: a Hugging Face
Trainer's checkpoint-N/ folders (tiny GPT-2, ``save_steps``, a local character
tokenizer) with ``--text`` and ``--tokens``, and Lightning ``.ckpt`` files of
``ModelCheckpoint(every_n_train_steps=...)`` with ``--entry``. Each measurement is
checked against a brute force that loads every checkpoint with the framework's own
loader and flattens F's gradient by autograd."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("transformers", reason="the huggingface extra is not installed")

from tests.checkpoints import _frameworks as fw  # noqa: E402
from trajreg.cli import main  # noqa: E402
from trajreg.principle import epochwise_gamma_hat  # noqa: E402

# float32 models, float64 sums: a few float32 roundings of each quantity's scale
RTOL = 1e-5
N_BATCHES, BATCH_SIZE = 3, 4


@pytest.fixture(scope="module")
def gpt2_series(tmp_path_factory):
    """checkpoint-4, -8, -12 (name order 12, 4, 8) of a Trainer run, the text it was
    trained on and that text's token ids by the character vocabulary."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gpt2")
    text = fw.pydoc_text()
    fw.train_gpt2(root / "trainer", text)
    torch.set_num_threads(threads)
    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    vocab = fw.character_vocab(text)
    return root / "trainer", corpus, np.array([vocab[c] for c in text], dtype=np.int64)


def _measure(args: list[str], out: Path) -> tuple[pd.DataFrame, dict]:
    assert main(["checkpoints", *args, "--out", str(out), "--no-figures", "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    return pd.read_parquet(out / "metrics.parquet"), summary


def _check_gpt2(table: pd.DataFrame, summary: dict, trainer: Path, ids: np.ndarray) -> None:
    assert table["step"].tolist() == [4, 8, 12]
    folders = [trainer / f"checkpoint-{n}" for n in (4, 8, 12)]
    assert table["path"].tolist() == [str(f) for f in folders]
    facts = summary["checkpoints"]
    assert facts["step_from"] == ["trainer_state.json"] and facts["kind"] == ["huggingface"]
    xs, grads, losses = fw.gpt2_brute_force(folders, ids, N_BATCHES, BATCH_SIZE)
    # lm_head is tied to wte (and absent from model.safetensors): x counts it once
    assert summary["n_params"] == xs.shape[1]
    errors = fw.relative_errors(table, xs, grads, losses, k_star=2)
    assert max(errors.values()) < RTOL, errors
    window = slice(*summary["window"])
    rows = np.arange(3)[window]
    rows = rows[rows != 2]
    gamma = epochwise_gamma_hat(xs[rows], grads[rows], losses[rows], xs[2], losses[2])
    assert summary["gamma_hat"]["0.0"] == pytest.approx(gamma, rel=1e-4)


def test_trainer_checkpoint_folders_with_text(gpt2_series, tmp_path, one_thread):
    trainer, corpus, ids = gpt2_series
    table, summary = _measure(
        [str(trainer), "--text", str(corpus), "--batches", str(N_BATCHES),
         "--batch-size", str(BATCH_SIZE)], tmp_path / "run")
    _check_gpt2(table, summary, trainer, ids)
    # the tokenizer saved with the checkpoints: one token a character, as in training
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["checkpoints"]["huggingface"]["tokens"] == len(ids)
    assert np.isfinite(table["F"]).all() and table["F"].iloc[-1] < table["F"].iloc[0]


def test_trainer_checkpoint_folders_with_tokens(gpt2_series, tmp_path, one_thread):
    trainer, _, ids = gpt2_series
    tokens = tmp_path / "ids.npy"
    np.save(tokens, ids)
    table, summary = _measure(
        [str(trainer), "--tokens", str(tokens), "--batches", str(N_BATCHES),
         "--batch-size", str(BATCH_SIZE)], tmp_path / "run")
    _check_gpt2(table, summary, trainer, ids)


def test_lightning_ckpt_series_with_entry(tmp_path, one_thread):
    pytest.importorskip("lightning.pytorch")
    ckpts = tmp_path / "ckpts"
    cls = fw.train_lightning(ckpts)
    names = sorted(p.name for p in ckpts.iterdir())
    # name order is not step order; last.ckpt repeats step 16
    assert names == ["epoch=0-step=12.ckpt", "epoch=0-step=16.ckpt", "epoch=0-step=4.ckpt",
                     "epoch=0-step=8.ckpt", "last.ckpt"]
    table, summary = _measure([str(ckpts), "--entry", f"{fw.FILE}:lightning_target"],
                              tmp_path / "run")
    assert table["step"].tolist() == [4, 8, 12, 16]
    files = [ckpts / f"epoch=0-step={n}.ckpt" for n in (4, 8, 12, 16)]
    assert table["path"].tolist() == [str(f) for f in files]  # last.ckpt dropped
    facts = summary["checkpoints"]
    assert facts["step_from"] == ["global_step"] and facts["kind"] == ["torch"]
    xs, grads, losses = fw.lightning_brute_force(cls, files)
    errors = fw.relative_errors(table, xs, grads, losses, k_star=3)
    assert max(errors.values()) < RTOL, errors
    # the weights moved between checkpoints (a series, not four copies of one state)
    assert (table["D"].to_numpy()[:-1] > 1e-4).all()


def test_sharded_checkpoint_folders_measure_as_unsharded(gpt2_series, tmp_path, one_thread):
    """Each checkpoint saved again by ``save_pretrained`` in shards of 40 KB
    (model.safetensors.index.json): the same measurement, number for number."""
    import shutil

    import transformers

    trainer, corpus, _ = gpt2_series
    sharded = tmp_path / "sharded"
    for n in (4, 8, 12):
        src, dst = trainer / f"checkpoint-{n}", sharded / f"checkpoint-{n}"
        transformers.GPT2LMHeadModel.from_pretrained(str(src)).save_pretrained(
            str(dst), max_shard_size="40KB")
        for name in ("trainer_state.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / name, dst / name)
    assert len(list((sharded / "checkpoint-4").glob("model-*.safetensors"))) > 1
    args = ["--text", str(corpus), "--batches", "2", "--batch-size", str(BATCH_SIZE)]
    whole, _ = _measure([str(trainer), *args], tmp_path / "whole")
    shards, _ = _measure([str(sharded), *args], tmp_path / "shards")
    pd.testing.assert_frame_equal(shards.drop(columns="path"), whole.drop(columns="path"))
