"""``trajreg checkpoints ... -q`` on Hugging Face GPT-2 folders printed transformers' own
"`loss_type=None` was set in the config but it is unrecognized" line on every run: the
model class built from config.json (GPT2LMHeadModel) is not in transformers' loss table,
whose default (ForCausalLM) is the loss used anyway. The model is now given that loss
type by name, so a quiet measurement prints nothing (and measures the same numbers)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests.checkpoints import _frameworks as fw


def test_quiet_checkpoint_measurement_prints_nothing(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    text = fw.pydoc_text()
    fw.train_gpt2(tmp_path / "trainer", text)
    torch.set_num_threads(threads)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "trajreg.cli", "checkpoints",
                           str(tmp_path / "trainer"), "--text", str(corpus), "--batches", "2",
                           "--batch-size", "2", "--out", str(tmp_path / "run"), "-q",
                           "--no-figures"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
