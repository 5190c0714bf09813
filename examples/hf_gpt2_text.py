"""Measure the regularity principle on a GPT-2 trained by the Hugging Face Trainer.

    python examples/hf_gpt2_text.py --out runs/hf-gpt2-text [--steps 200]

A tiny ``GPT2LMHeadModel`` (2 layers, width 64, 2 heads, 64 positions; about 10^5
parameters) built from a ``GPT2Config``: no pretrained weights, no tokenizer, nothing
downloaded. The tokens are trajreg's own characters of the ``text`` data set, the
documentation bundled with CPython (``pydoc_data``), loaded by
``trajreg.train.data.load_data``: its vocabulary is the model's, its windows of 64
characters the model's inputs. The Trainer trains for ``--steps`` optimizer steps
(``max_steps``; no epochs) with AdamW (weight decay on matrices only) and a warmup +
cosine learning rate of our own: Hugging Face's warmups start at a learning rate of 0,
and trajreg needs eta_t > 0 at every step (the callback refuses a step at 0).

The lines marked ``# trajreg`` are all that measuring it takes. ``labels`` are the
``input_ids``: GPT-2 shifts them inside its loss, and the Trainer normalises each
micro-batch's loss by the step's count of predicted tokens (``num_items_in_batch``),
which the callback sees and rebuilds exactly.
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch
import transformers

from trajreg.integrations.huggingface import RegularityCallback  # trajreg
from trajreg.train.data import DataConfig, load_data

BLOCK_SIZE = 64  # GPT-2's n_positions: each input is one window of 64 characters


class Windows(torch.utils.data.Dataset):
    """Every window of the training split (stride 1), as the Trainer's examples."""

    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.windows[i]
        return {"input_ids": ids, "labels": ids}  # GPT-2 predicts labels[1:] from ids[:-1]


def optimizer_and_schedule(model: torch.nn.Module, args: argparse.Namespace):
    """AdamW, weight decay on the matrices only; a linear warmup that starts above 0
    (step t at (t + 1) / (warmup + 1) of the peak), then cosine decay to a tenth."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights once
    optimizer = torch.optim.AdamW([
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=args.lr)
    warmup = max(1, args.steps // 10)

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / (warmup + 1)
        ratio = min(1.0, (t - warmup) / max(1, args.steps - 1 - warmup))
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * ratio))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/hf-gpt2-text")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="windows per micro-batch")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--epoch-steps", type=int, default=None,
                   help="an epoch, for the window rule, every this many steps "
                        "(default: a tenth of the run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    """Train; returns the callback's summary."""
    args = parse(argv)
    data = load_data(DataConfig(name="text", batch_size=args.batch_size),
                     block_size=BLOCK_SIZE)
    config = transformers.GPT2Config(vocab_size=data.n_classes, n_positions=BLOCK_SIZE,
                                     n_embd=64, n_layer=2, n_head=2,
                                     bos_token_id=None, eos_token_id=None)  # no such tokens
    torch.manual_seed(args.seed)  # the initialisation; the Trainer seeds the rest
    model = transformers.GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params} parameters, vocabulary {data.n_classes}, "
          f"{len(data.x_train)} training windows of {BLOCK_SIZE} characters")

    scratch = tempfile.TemporaryDirectory()  # the Trainer's output_dir: nothing is saved
    training = transformers.TrainingArguments(
        output_dir=scratch.name, max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.accum,
        max_grad_norm=1.0, seed=args.seed, use_cpu=True,
        logging_steps=max(1, args.steps // 5), save_strategy="no", report_to=[],
        dataloader_num_workers=0, disable_tqdm=True)
    # trajreg: no epochs with max_steps: epoch_steps cuts the run into periods for the
    # window rule (docs/integrations.md, "Loops without epochs")
    epoch_steps = args.epoch_steps or max(1, args.steps // 10)
    callback = RegularityCallback(args.out, epoch_steps=epoch_steps,  # trajreg
                                  figures=not args.no_figures)  # trajreg
    trainer = transformers.Trainer(model=model, args=training,
                                   train_dataset=Windows(data.x_train),
                                   optimizers=optimizer_and_schedule(model, args),
                                   callbacks=[callback])  # trajreg
    trainer.train()
    scratch.cleanup()

    summary = callback.summary  # trajreg
    assert summary is not None
    g, check = summary.gamma_hat or {}, summary.loss_check or {}
    print(f"gamma_hat(eps=0) = {g['0.0']:.4g}, gamma_hat(eps=0.05) = {g['0.05']:.4g}, "
          f"losses rebuilt exactly: {check['equal']}/{check['steps']}")
    print(f"run directory: {args.out}")
    return summary


if __name__ == "__main__":
    main()
