"""``trajreg checkpoints`` of Hugging Face folders with ``--block-size`` above the
model's context (GPT-2's ``n_positions``) failed inside the model's position embedding:
"internal error: IndexError: index out of range in self". Now it is one line naming the
context, exit 2, nothing written."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="the huggingface extra is not installed")

from tests.checkpoints import _frameworks as fw  # noqa: E402
from trajreg.cli import main  # noqa: E402


def test_block_size_above_the_context_is_refused(tmp_path, capsys, one_thread):
    trainer, text = tmp_path / "trainer", fw.pydoc_text()
    fw.train_gpt2(trainer, text, steps=4, save_steps=2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["checkpoints", str(trainer), "--text", str(corpus), "--batches", "1",
                 "--block-size", str(fw.BLOCK + 1), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"trajreg: error: --block-size: {fw.BLOCK + 1} tokens is more than the "
                   f"model's context ({fw.BLOCK} positions, config.json)"), err
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
    assert main(["checkpoints", str(trainer), "--text", str(corpus), "--batches", "1",
                 "--block-size", str(fw.BLOCK), "--out", str(out), "-q"]) == 0
