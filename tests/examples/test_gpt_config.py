"""examples/gpt-text.yaml, the GPT config docs/transformers.md shows: the page's block is
the file, and the config trains below the unigram entropy of its corpus."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

from trajreg.run.runner import run
from trajreg.train.config import load_config, read_yaml
from trajreg.train.data import load_data

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gpt-text.yaml"


def test_the_docs_show_the_example_config():
    blocks = re.findall(r"<!-- from examples/gpt-text.yaml -->\n```yaml\n(.*?)```",
                        (ROOT / "docs" / "transformers.md").read_text(), re.S)
    assert blocks == [EXAMPLE.read_text()]


def test_the_example_trains_below_the_unigram_entropy(tmp_path):
    raw = read_yaml(EXAMPLE, "run")
    raw["train"] = {**raw["train"], "threads": 1}
    cfg = load_config(raw)
    data = load_data(cfg.data, block_size=cfg.model.block_size)
    counts = Counter(data.x_train[:, 0].tolist())  # the training windows' first tokens
    n = sum(counts.values())
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())  # nats
    _, summary = run(cfg, tmp_path / "run", figures=False, progress=False)
    assert summary.final_loss < entropy, (summary.final_loss, entropy)
    assert summary.record_mode == "sketch" and summary.sketch_error is not None
