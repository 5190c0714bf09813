"""Measure a finished Hugging Face Trainer run from its checkpoint folders.

    python examples/checkpoints_hf.py --out runs/checkpoints-hf [--steps 60 --save-steps 10]

First an ordinary Trainer run that knows nothing of trajreg: a tiny ``GPT2LMHeadModel``
(2 layers, width 32, 2 heads, 64 positions) built from a ``GPT2Config`` on the
documentation bundled with CPython (``pydoc_data``), with a character tokenizer built
here from that text (nothing is downloaded). The Trainer saves ``checkpoint-N/`` every
``--save-steps`` steps, the tokenizer with each (``processing_class``).

Then one call measures the finished run: the model is built from the checkpoints' own
config.json, the text tokenized by their tokenizer, and every checkpoint gets F, the
full gradient on the same evaluation windows, a_k, b_k, s_k and D_k (docs/principle.md,
the epochwise form). On the command line it is one command:

    trajreg checkpoints runs/checkpoints-hf-trainer --text runs/checkpoints-hf-corpus.txt \\
        --out runs/checkpoints-hf
"""

from __future__ import annotations

import argparse
from pathlib import Path
from pydoc_data.topics import topics

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from trajreg.checkpoints import measure_checkpoints

BLOCK_SIZE = 64


def character_tokenizer(text: str) -> transformers.PreTrainedTokenizerFast:
    """One token a character of ``text``, [UNK] for any other; [PAD] only because the
    Trainer's collator asks for a pad token (every window is full)."""
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    vocab.update({"[UNK]": len(vocab), "[PAD]": len(vocab) + 1})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # every character
    tokenizer.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                                unk_token="[UNK]", pad_token="[PAD]")


class Windows(torch.utils.data.Dataset):
    """Consecutive windows of BLOCK_SIZE token ids, each its own labels (GPT-2 shifts)."""

    def __init__(self, ids: list[int]) -> None:
        n = len(ids) // BLOCK_SIZE * BLOCK_SIZE
        self.windows = torch.tensor(ids[:n]).view(-1, BLOCK_SIZE)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.windows[i], "labels": self.windows[i]}


def train(text: str, output_dir: Path, steps: int, save_steps: int, seed: int) -> None:
    """An ordinary Trainer run saving checkpoint-N/ every ``save_steps`` steps."""
    tokenizer = character_tokenizer(text)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=BLOCK_SIZE,
                                     n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, save_strategy="steps",
        save_steps=save_steps, per_device_train_batch_size=8, learning_rate=3e-3,
        warmup_steps=0, seed=seed, use_cpu=True, report_to=[], logging_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args,
                                   train_dataset=Windows(tokenizer(text)["input_ids"]),
                                   processing_class=tokenizer)
    trainer.train()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/checkpoints-hf", help="the run directory")
    p.add_argument("--train-dir", help="the Trainer's output_dir (default: OUT-trainer)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps")
    p.add_argument("--save-steps", type=int, default=10, help="a checkpoint every N steps")
    p.add_argument("--characters", type=int, default=100_000,
                   help="how much of the pydoc text to train on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    """Train, then measure the checkpoints; returns the run's summary."""
    args = parse(argv)
    train_dir = Path(args.train_dir or f"{args.out}-trainer")
    corpus = Path(f"{args.out}-corpus.txt")
    corpus.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(topics[k] for k in sorted(topics))[: args.characters]
    corpus.write_text(text, encoding="utf-8")
    train(text, train_dir, args.steps, args.save_steps, args.seed)

    # the finished run: checkpoint-N/ folders ordered by their trainer_state.json
    out, summary = measure_checkpoints(train_dir, args.out, text=corpus,
                                       figures=not args.no_figures)
    facts = summary.checkpoints or {}
    print(f"{facts['n_checkpoints']} checkpoints at steps {facts['steps']}: F "
          f"{summary.full_loss[0]:.4g} -> {summary.final_loss:.4g}, gamma_hat(eps=0) = "
          f"{(summary.gamma_hat or {})['0.0']:.4g}, star-convex fraction "
          f"{summary.star_convex_fraction:.3g}")
    print(f"run directory: {out}")
    return summary


if __name__ == "__main__":
    main()
