"""What RegularitySession costs a whole epochless script: examples/lm_loop.py.

Run by hand from the repository root::

    python benchmarks/bench_session.py [--iters 1000] [--repeats 5] [--threads 1]
    python benchmarks/bench_session.py --only floor   # b_t's forward passes vs training

Each variant of the character-level language-model loop (examples/lm_loop.py, about
10^5 parameters, 4 accumulated micro-batches a step, ``--iters`` optimizer steps, no
epochs) runs as a fresh subprocess, timed from outside: ``off`` (``--no-trajreg``, the
same script without the session, which then does not even import trajreg) and the
session in record modes ``store``, ``sample`` and ``sketch`` (figures on, the
example's defaults). Repeats are interleaved (every variant once per round, the order
rotated each round) and reported as medians, with ratios of medians against ``off``
(the house style of bench_recording.py and bench_onepass.py; the machine may be
shared). Each process runs on ``--threads`` threads (``OMP_NUM_THREADS`` and
``torch.set_num_threads``).

Besides the whole script, the example reports where its time went: the imports
(torch, numpy; trajreg with the session), the set-up (data, model, ``start``), the
training loop, and ``session.finish`` (rebuilding the losses, the measurement, the
analysis and the run directory); what the outside clock saw beyond them is the
interpreter's start and exit ("startup"). So the table separates the session's cost
during training from its fixed costs after it. Every variant's training losses must
equal ``off``'s bit for bit (checked; a mismatch is a crash).

Exit status 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import med, section, table  # benchmarks/report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "lm_loop.py"
# variant -> the example's arguments
VARIANTS = {
    "off": ["--no-trajreg"],
    "store": ["--mode", "store"],
    "sample": ["--mode", "sample"],
    "sketch": ["--mode", "sketch"],
    # not run by default: the session without its interpolation (mli)
    "store/no-interp": ["--mode", "store", "--no-interpolation"],
}
DEFAULT = ("off", "store", "sample", "sketch")
PARTS = ("total_s", "startup_s", "imports_s", "setup_s", "train_s", "finish_s")
CRASHES: dict[str, str] = {}


def run_once(variant: str, args: argparse.Namespace) -> dict | None:
    """One fresh process of the example: its report, the outside wall time and, with the
    session, summary.json's loss check. None (and a crash noted) when it failed."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    parent = Path(tempfile.mkdtemp(prefix="bench-session-"))
    try:
        report = parent / "report.json"
        cmd = [sys.executable, str(SCRIPT), "--iters", str(args.iters), "--threads",
               str(args.threads), "--out", str(parent / "run"), "--report", str(report),
               *VARIANTS[variant]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            CRASHES.setdefault(variant, proc.stderr[-3000:])
            print(f"  [{variant}] CRASHED (exit {proc.returncode})", flush=True)
            return None
        out = json.loads(report.read_text())
        times = out["times"]
        times["total_s"] = total
        times["startup_s"] = total - sum(times[k] for k in PARTS[2:])
        if variant != "off":
            summary = json.loads((parent / "run" / "summary.json").read_text())
            out["loss_check"] = summary.get("loss_check")
            out["gamma_hat"] = summary.get("gamma_hat")
        return out
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def floor(threads: int, batches: int = 50, repeats: int = 3) -> None:
    """The floor of b_t on the example's model: one micro-batch's forward pass in train
    mode (dropout masks drawn, as b_t's evaluation at x* draws them again), in eval mode
    (no dropout), and a training forward + backward, medians of ``repeats`` passes over
    ``batches`` micro-batches (ms each)."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    import lm_loop  # examples/lm_loop.py

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data, gen = lm_loop.CharData(), torch.Generator().manual_seed(0)
    model = lm_loop.TinyGPT(data.vocab_size, 64, d=64, dropout=0.1)
    micro = [data.batch("train", 8, 64, gen) for _ in range(batches)]

    def timed(train: bool, backward: bool) -> float:
        model.train(train)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            with torch.set_grad_enabled(backward):
                for b in micro:
                    loss = lm_loop.loss_fn(model, b)
                    if backward:
                        loss.backward()
            times.append((time.perf_counter() - t) / batches * 1e3)
        return med(times)

    section(f"floor: one micro-batch of examples/lm_loop.py, {threads} thread(s), ms")
    train_step, fwd, fwd_eval = timed(True, True), timed(True, False), timed(False, False)
    table(["forward+backward (training)", "forward, dropout (b_t)", "forward, eval",
           "b_t / training"],
          [[f"{train_step:.2f}", f"{fwd:.2f}", f"{fwd_eval:.2f}", f"{fwd / train_step:.2f}"]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=1000, help="optimizer steps of each run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="threads of each run's process")
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(DEFAULT),
                   help="off is always run (the baseline)")
    p.add_argument("--warmup", action="store_true",
                   help="one untimed round first (warms the page cache for the imports)")
    p.add_argument("--only", choices=("run", "floor"),
                   help="the whole-script runs alone, or the floor alone (the forward "
                        "passes b_t needs against a training step)")
    args = p.parse_args(argv)
    variants = ["off", *(v for v in dict.fromkeys(args.variants) if v != "off")]
    if args.only == "floor":
        floor(args.threads)
        return 0

    import torch

    t_start = time.perf_counter()
    print(f"trajreg session benchmark: python {platform.python_version()}, torch "
          f"{torch.__version__}, {args.threads} threads a process, cpus {os.cpu_count()}, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    section(f"examples/lm_loop.py, {args.iters} optimizer steps, each variant a fresh "
            f"process, {args.repeats} interleaved repeats"
            + (" after a warm-up round" if args.warmup else ""))
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(-1 if args.warmup else 0, args.repeats):
        shift = max(r, 0) % len(variants)  # rotated: no variant always runs first
        done = {}
        for v in variants[shift:] + variants[:shift]:
            out = run_once(v, args)
            if out is not None:
                done[v] = out
                if r >= 0:
                    results[v].append(out)
        if r >= 0:
            print(f"  repeat {r + 1}/{args.repeats} (load {os.getloadavg()[0]:.2f}): "
                  + "  ".join(f"{v}={done[v]['times']['total_s']:.1f}s" for v in variants
                              if v in done), flush=True)
        if "off" in done:  # trajreg must not change the training, bit for bit
            for v, out in done.items():
                if out["losses"] != done["off"]["losses"]:
                    CRASHES.setdefault(f"{v} losses", "training losses differ from off's")
                    print(f"  [{v}] training losses differ from off's", flush=True)

    medians = {v: {k: med([o["times"][k] for o in results[v]]) for k in PARTS}
               for v in variants}
    base = medians["off"]
    print()
    table(["variant", *(k.removesuffix("_s") + "_s" for k in PARTS)],
          [[v, *(f"{medians[v][k]:.2f}" for k in PARTS)] for v in variants])
    print()
    rows = []
    for v in variants:
        m = medians[v]
        extra_us = (m["train_s"] - base["train_s"]) / args.iters * 1e6
        fixed = m["total_s"] - m["train_s"] - (base["total_s"] - base["train_s"])
        checks = [o.get("loss_check") or {} for o in results[v]]
        check = (f"{checks[-1].get('equal')}/{checks[-1].get('steps')}" if checks
                 and checks[-1] else "")
        rows.append([v, f"{m['total_s'] / base['total_s']:.3f}x",
                     f"{m['train_s'] / base['train_s']:.3f}x", f"{extra_us:+.0f}",
                     f"{m['finish_s']:.2f}", f"{fixed:+.2f}",
                     f"{fixed / base['total_s']:.3f}x", check])
    table(["variant", "whole_script", "training_only", "train_us/step", "finish_s",
           "fixed_s", "fixed/off_total", "loss_check"], rows)
    print("\n  whole_script, training_only: ratios of medians against off; train_us/step: "
          "the session's cost during training a step;\n  fixed_s: the median run's "
          "time outside training beyond off's (imports of trajreg, start, finish)")
    print(f"\n  total wall time {time.perf_counter() - t_start:.0f}s")
    for what, text in CRASHES.items():
        print(f"--- CRASH {what}\n{text}")
    return 1 if CRASHES else 0


if __name__ == "__main__":
    sys.exit(main())
