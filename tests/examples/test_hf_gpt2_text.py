"""examples/hf_gpt2_text.py end to end: a config-built GPT-2 on trajreg's pydoc
characters, trained by the Hugging Face Trainer and measured by RegularityCallback; the
loss the callback rebuilds from each recorded batch is the Trainer's, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers", reason="the huggingface extra is not installed")

from tests.examples.common import check_run, load_example  # noqa: E402

STEPS = 20


def test_gpt2_on_the_text_corpus(tmp_path, one_thread):
    out = tmp_path / "run"
    summary = load_example("hf_gpt2_text").main(["--out", str(out), "--steps", str(STEPS),
                                                 "--epoch-steps", "5", "--no-figures"])
    written = check_run(out, STEPS)  # complete, every rebuilt loss equal, analysable
    assert written.gamma_hat == summary.gamma_hat and written.source == "huggingface"
    assert written.loss_check["steps"] == STEPS  # store mode: every step rebuilt
    table = pd.read_parquet(out / "metrics.parquet")
    loss, lr = table["loss"].to_numpy(), table["lr"].to_numpy()
    assert np.isfinite(loss).all() and len(loss) == STEPS
    assert loss[-5:].mean() < loss[:5].mean() - 0.3, loss  # it learned something
    # from about uniform over the text set's vocabulary: 103 characters and unknown
    assert loss[0] == pytest.approx(np.log(104), rel=0.1)
    assert (lr > 0).all() and lr.argmax() == STEPS // 10  # a warmup that starts above 0
