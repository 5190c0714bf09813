"""Measure the regularity principle on an epochless character-level language model.

    python examples/lm_loop.py --out runs/lm-loop [--iters 300] [--mode store|sample|sketch]

A loop in the style of nanoGPT: a small decoder-only transformer (about 10^5
parameters at the defaults) trained for ``--iters`` iterations, not epochs, with
AdamW (weight decay on matrices only), gradient accumulation, gradient clipping and a
warmup + cosine learning rate set by hand each iteration. The text is the CPython
documentation that ships with Python (``pydoc_data.topics``), so nothing is downloaded.

The lines marked ``# trajreg`` are all that measuring it takes (see
examples/plain_loop.py for what each call does). The one thing to get right with
gradient accumulation: ``session.after_batch`` takes the micro-batch's own loss, the
value ``loss_fn`` returns, not the loss divided by the accumulation steps that goes
into ``backward``. ``--no-trajreg`` runs the same loop without the session (the
baseline of benchmarks/bench_session.py); ``--report FILE`` writes the loop's losses
and where the time went as JSON.
"""

from __future__ import annotations

import time

T_IMPORT = time.perf_counter()  # before the heavy imports: what they cost is reported

import argparse  # noqa: E402 - timed imports
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

IMPORTS_S = time.perf_counter() - T_IMPORT


# ----------------------------------------------------------------------------- data

class CharData:
    """The CPython docs as characters: the vocabulary of the training split (an extra
    id for characters seen only in validation), 90/10 train/val split."""

    def __init__(self) -> None:
        from pydoc_data.topics import topics

        text = "".join(topics[k] for k in sorted(topics))  # a fixed order of topics
        cut = int(0.9 * len(text))
        chars = sorted(set(text[:cut]))
        self.vocab_size = len(chars) + 1  # the last id: unknown
        index = {c: i for i, c in enumerate(chars)}
        ids = [index.get(c, len(chars)) for c in text]
        self.train = torch.tensor(ids[:cut], dtype=torch.long)
        self.val = torch.tensor(ids[cut:], dtype=torch.long)

    def batch(self, split: str, batch_size: int, block_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows of ``block_size`` characters and their next
        characters, drawn from ``generator`` (not the global one that dropout uses)."""
        data = self.train if split == "train" else self.val
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        x = torch.stack([data[i : i + block_size] for i in ix.tolist()])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()])
        return x, y


# ----------------------------------------------------------------------------- model

class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        # written out rather than F.scaled_dot_product_attention, whose CPU kernel may
        # differ between grad and no-grad calls: the session's loss check is bit for bit
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = self.drop(att.masked_fill(~mask, float("-inf")).softmax(dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.drop(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, d: int = 64, layers: int = 2,
                 heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(block_size, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied: one matrix, one parameter
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.drop(self.tok(idx) + self.pos(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One micro-batch's loss: what training computes and what the session rebuilds."""
    x, y = batch
    return model(x, y)


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices (linear and embedding weights) only."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied weight once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.99))


def learning_rate(it: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at the last iteration."""
    if it < args.warmup:
        return args.lr * (it + 1) / (args.warmup + 1)
    ratio = (it - args.warmup) / max(1, args.iters - 1 - args.warmup)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, ratio))) * (args.lr - args.min_lr)


@torch.no_grad()
def estimate_loss(model: nn.Module, data: CharData, args: argparse.Namespace) -> dict:
    """The mean loss of ``eval_batches`` batches of each split, from a generator of its
    own (the training batches and the global random state are left alone)."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        g = torch.Generator().manual_seed(args.seed + 1)
        losses = [float(loss_fn(model, data.batch(split, args.batch_size, args.block_size, g)))
                  for _ in range(args.eval_batches)]
        out[split] = float(np.mean(losses))
    model.train()
    return out


# ----------------------------------------------------------------------------- main

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/lm-loop")
    p.add_argument("--iters", type=int, default=300, help="optimizer steps")
    p.add_argument("--mode", choices=("store", "sample", "sketch"), default="store")
    p.add_argument("--no-trajreg", action="store_true",
                   help="the same loop without the session (the benchmark's baseline)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--no-interpolation", action="store_true",
                   help="skip the session's loss on the segment from x_0 to x* (mli)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch-steps", type=int, default=25,
                   help="an epoch, for the session's window rule, every this many steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--report", help="write the loop's losses and timings to this JSON file")
    p.add_argument("--batch-size", type=int, default=8, help="windows per micro-batch")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=8)
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    """Train; returns the session's summary (None with ``--no-trajreg``)."""
    t_main = time.perf_counter()
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # deterministic on CPU: every random draw is seeded, and the CPU kernels used here
    # give the same floats at a fixed thread count (tests/examples compares two runs)
    torch.manual_seed(args.seed)  # the model's initialisation and dropout
    data = CharData()
    batches = torch.Generator().manual_seed(args.seed)  # the training windows
    model = TinyGPT(data.vocab_size, args.block_size, d=args.d_model, dropout=args.dropout)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params} parameters, vocabulary {data.vocab_size}, {len(data.train)} training "
          f"characters, {args.iters} iterations of {args.accum} x {args.batch_size} x "
          f"{args.block_size} tokens")

    session = None
    imports_s = IMPORTS_S
    if not args.no_trajreg:
        t_import = time.perf_counter()
        # imported here so that --no-trajreg, the baseline, does not pay for it
        from trajreg.integrations import RegularitySession  # trajreg

        imports_s += time.perf_counter() - t_import
        # trajreg: no epochs in this loop: epoch_steps cuts the run into periods for the
        # window rule (docs/integrations.md, "Loops without epochs"); steps lets the
        # one-pass modes size their samples
        session = RegularitySession(args.out, source="plain", mode=args.mode,  # trajreg
                                    steps=args.iters, epoch_steps=args.epoch_steps,  # trajreg
                                    figures=not args.no_figures,  # trajreg
                                    interpolation=not args.no_interpolation)  # trajreg
        session.start(model, optimizer, info={"iters": args.iters})  # trajreg
    setup_s = time.perf_counter() - t_main - (imports_s - IMPORTS_S)

    t_train = time.perf_counter()
    losses, evals = [], []
    model.train()
    for it in range(args.iters):
        lr = learning_rate(it, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = []
        for _ in range(args.accum):
            batch = data.batch("train", args.batch_size, args.block_size, batches)
            if session is not None:
                session.before_batch()  # trajreg
            loss = loss_fn(model, batch)
            if session is not None:
                # trajreg: the micro-batch's own loss, before dividing by the accumulation
                # steps: the session rebuilds it with loss_fn and checks it bit for bit
                session.after_batch(batch, loss)  # trajreg
            micro.append(float(loss.detach()))
            (loss / args.accum).backward()  # the step's gradient: of the micro-batches' mean
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(np.mean(micro)))  # the step's loss, as the session combines it
        if (it + 1) % args.eval_interval == 0 or it + 1 == args.iters:
            evals.append({"iter": it + 1, **estimate_loss(model, data, args)})
            print(f"iter {it + 1}: loss {losses[-1]:.4f}, train {evals[-1]['train']:.4f}, "
                  f"val {evals[-1]['val']:.4f}", flush=True)
    train_s = time.perf_counter() - t_train

    t_finish = time.perf_counter()
    summary = None
    if session is not None:
        summary = session.finish(model, loss_fn)  # trajreg
        g, check = summary.gamma_hat or {}, summary.loss_check or {}
        print(f"gamma_hat(eps=0) = {g['0.0']:.4g}, gamma_hat(eps=0.05) = {g['0.05']:.4g}, "
              f"losses rebuilt exactly: {check['equal']}/{check['steps']}")
        print(f"run directory: {args.out}")
    finish_s = time.perf_counter() - t_finish
    times = {"imports_s": imports_s, "setup_s": setup_s, "train_s": train_s,
             "finish_s": finish_s}
    print("timing: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    if args.report:
        Path(args.report).write_text(json.dumps(
            {"losses": losses, "evals": evals, "n_params": n_params, "times": times,
             "trajreg": session is not None, "mode": None if session is None else args.mode}))
    return summary


if __name__ == "__main__":
    main()
