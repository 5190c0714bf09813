"""A Trainer run without ``processing_class`` saves no tokenizer in its checkpoint-N/
folders. With ``--text``, ``AutoTokenizer.from_pretrained`` did not fail: it built the
config's tokenizer class empty (GPT-2's, a vocabulary of 0), which turned the text into
no tokens, and the error blamed the data ("need 1024 tokens, the data has 0"). Now the
missing tokenizer is named (one line, exit 2, nothing written) and ``--tokens`` is the
way out."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the huggingface extra is not installed")

from tests.checkpoints import _frameworks as fw  # noqa: E402
from trajreg.cli import main  # noqa: E402


def test_no_tokenizer_in_the_checkpoint_is_named(tmp_path, capsys, one_thread):
    trainer, text = tmp_path / "trainer", fw.pydoc_text()
    fw.train_gpt2(trainer, text, tokenizer=False)
    assert not list(trainer.glob("checkpoint-4/tokenizer*"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    common = ["--batches", "2", "--batch-size", "2", "--no-figures", "-q"]
    capsys.readouterr()
    assert main(["checkpoints", str(trainer), "--text", str(corpus), "--out", str(out),
                 *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no tokenizer saved with the checkpoint" in err and "--tokens" in err, err
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
    # the way out: the token ids
    vocab = fw.character_vocab(text)
    np.save(tmp_path / "ids.npy", np.array([vocab[c] for c in text], dtype=np.int64))
    assert main(["checkpoints", str(trainer), "--tokens", str(tmp_path / "ids.npy"),
                 "--out", str(out), *common]) == 0
