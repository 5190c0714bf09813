"""What recording costs on a GPT-2-small-shaped model (124M parameters) on this CPU.

A trajreg GPT of GPT-2 small's shape (12 blocks, width 768, 12 heads, GPT-2's
vocabulary of 50257 tokens, tied embeddings: 124M parameters) trains with AdamW for
``--steps`` steps on windows of the pydoc text corpus (trajreg's character ids, the first of
the 50257 ids), batch 1, ``--block`` tokens, one process per record mode (off, sample, sketch),
each a fresh interpreter so its peak RSS is its own. Per mode: the median wall time of
a step, the recorder's hooks' time a step (the optimizer step hooks, wrapped), the
peak RSS against the model plus optimizer state (params + grads + AdamW's two moments
= 4 d float32), and the disk the mode wrote per step. The one-pass modes sample at
their rates alone (``record.sample_min_steps`` and ``record.sketch_check_steps`` 0), as
in a long run: at their defaults a run this short keeps every step exactly.

    python benchmarks/bench_scale.py --steps 20 --block 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import section, table  # noqa: E402

MODES = ("off", "sample", "sketch")


def one(mode: str, steps: int, block: int, threads: int, out: Path) -> dict:
    """Train in this process with the recorder in ``mode``; the figures as a dict."""
    import numpy as np
    import torch

    from trajreg.record.modes import get_mode
    from trajreg.record.recorder import Recorder
    from trajreg.train.data import DataConfig, load_data
    from trajreg.train.models import ModelConfig, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModelConfig(name="gpt", depth=12, width=768, heads=12, block_size=block,
                      norm="layer")
    cfg.validate()
    model = build_model(cfg, (block,), 50257)
    d = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    # the corpus as trajreg's text set reads it: its training split's character ids
    data = load_data(DataConfig(name="text"), block_size=block)
    tokens = torch.cat([data.x_train[:, 0], data.x_train[-1, 1:]]).long()
    g = torch.Generator().manual_seed(1)
    # a long run's sampling: the exact samples at their rates alone (min_steps 0); at the
    # defaults a run of <= 200 (sample) or <= 100 (sketch's check) steps keeps every step
    # exactly, x_t, x_{t+1} and g_t of a step: 1.5 GB a step here
    record = SimpleNamespace(sample_rate=0.05, sample_min_steps=0, sketch_dim=None,
                             sketch_sample_rate=0.02, sketch_check_steps=0, gradients=None)
    mode_obj = get_mode(mode).from_config(record, seed=0)
    mode_obj.plan(steps, None)
    spent = 0.0
    rec = None
    if mode_obj.hooks:
        rec = Recorder(opt, out / "trajectory", mode=mode_obj, capacity=steps + 1)
        pre, post = rec._pre_step, rec._post_step

        def timed(fn):
            def wrapper(*a):
                nonlocal spent
                t = time.perf_counter()
                fn(*a)
                spent += time.perf_counter() - t
            return wrapper

        # the hooks were registered with the bound methods: re-register timed ones
        for h in rec._handles:
            h.remove()
        rec._handles = [opt.register_step_pre_hook(timed(pre)),
                        opt.register_step_post_hook(timed(post))]
    times = []
    for _ in range(steps):
        start = int(torch.randint(len(tokens) - block - 1, (1,), generator=g))
        x = tokens[start : start + block][None]
        y = tokens[start + 1 : start + block + 1][None]
        t = time.perf_counter()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    closing = 0.0
    if rec is not None:
        t = time.perf_counter()
        rec.close()
        closing = time.perf_counter() - t
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": mode, "d": d, "step_s": float(np.median(times[1:] or times)),
            "hooks_s": spent / steps, "close_s": closing, "disk_per_step": disk / steps,
            "rss": rss, "state": 4 * 4 * d, "final_loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in a child process
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(one(args.mode, args.steps, args.block, args.threads,
                             Path(args.out))))
        return
    rows = []
    for mode in MODES:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, __file__, "--mode", mode, "--out", tmp,
                                   "--steps", str(args.steps), "--block", str(args.block),
                                   "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]
    section(f"GPT-2-small shape, d = {base['d']:,} parameters, {args.steps} steps of "
            f"{args.block} tokens, batch 1, {args.threads} threads, load "
            f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    table(["mode", "step (s)", "x off", "hooks/step (ms)", "ns/param", "close (s)",
           "disk/step (MB)", "peak RSS (GB)", "RSS / (4 d fp32)"],
          [[r["mode"], f"{r['step_s']:.2f}", f"{r['step_s'] / base['step_s']:.2f}",
            f"{1e3 * r['hooks_s']:.1f}", f"{1e9 * r['hooks_s'] / r['d']:.2f}",
            f"{r['close_s']:.1f}", f"{r['disk_per_step'] / 1e6:.1f}",
            f"{r['rss'] / 1e9:.2f}", f"{r['rss'] / r['state']:.2f}"] for r in rows])


if __name__ == "__main__":
    main()
