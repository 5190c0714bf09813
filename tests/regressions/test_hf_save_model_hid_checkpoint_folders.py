"""A Trainer's output_dir after ``trainer.save_model()`` (and ``save_state()``) holds the
final model beside its checkpoint-N/ folders. ``trajreg checkpoints OUTPUT_DIR`` took the
directory for one checkpoint (its own model.safetensors) and refused the series: "1
checkpoint found ... a trajectory needs at least two". Now a directory with checkpoint
folders is those folders (the final model is the last of them)."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("transformers", reason="the huggingface extra is not installed")

from tests.checkpoints import _frameworks as fw  # noqa: E402
from trajreg.cli import main  # noqa: E402


def test_output_dir_with_final_model_is_its_checkpoint_series(tmp_path, one_thread):
    trainer, text = tmp_path / "trainer", fw.pydoc_text()
    fw.train_gpt2(trainer, text, save_model=True)
    assert (trainer / "model.safetensors").is_file()
    assert (trainer / "trainer_state.json").is_file()  # global_step 12, as checkpoint-12
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["checkpoints", str(trainer), "--text", str(corpus), "--batches", "2",
                 "--batch-size", "2", "--out", str(out), "--no-figures", "-q"]) == 0
    table = pd.read_parquet(out / "metrics.parquet")
    assert table["step"].tolist() == [4, 8, 12]
    assert table["path"].tolist() == [str(trainer / f"checkpoint-{n}") for n in (4, 8, 12)]
