"""What the recorder's hooks cost per parameter, against the model's size d.

Run by hand from the repository root::

    python benchmarks/bench_sketch_hooks.py --out docs/figures/sketch_hooks.png
    python benchmarks/bench_sketch_hooks.py --sizes 1e5 1e6 1e7 --out /tmp/hooks.png

The model is a bias-free ``nn.Linear`` of d parameters (1000 inputs, d / 1000
outputs), batch 8, trained by plain SGD without momentum on one thread (``--threads``),
so the optimizer holds no state and d reaches 1e8 (400 MB of float32 parameters) in a
few GB. For every d and record mode (``off``, ``sample``, ``sketch`` with and without
gradients, ``store`` up to ``--store-max``) a recorder is opened on the same model, its
optimizer hooks are removed and ``Recorder._pre_step`` / ``_post_step`` called by hand
around ``optimizer.step()`` right after the forward and backward pass, as in training,
and timed (wall); ``off`` times the training step itself (forward, backward, step). The
figure is ns per parameter per step, the median over every timed step (``--steps`` a
repeat after one untimed warm-up step; ``--repeats`` repeats, modes interleaved and
rotated each round, as the other benchmarks do on this shared machine). ``sketch`` uses
its default k (16384): at d <= 32768 it keeps x_t itself (S = I, marked ``I``).

``--parts`` also times the sketch mode's pieces on their own (hot, median of
``--steps`` calls) at each d: the flat copies of x_t and g_t, a CountSketch, s_t's
online difference norm (``SquaredNorms.push_next``) and ||g_t||^2 (``push``).

Prints a table and writes a log-log plot (PNG) to ``--out``. Exit status 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from report import med, section, table  # benchmarks/report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
MODES = ("off", "sample", "sketch", "sketch/no-grad", "store")
IN_FEATURES = 1000
BATCH = 8


def make_mode(name: str):
    from trajreg.record.modes import get_mode
    from trajreg.record.modes.sketch import SketchMode

    if name == "sketch":
        return SketchMode(seed=0)
    if name == "sketch/no-grad":
        return SketchMode(seed=0, gradients=False)
    return get_mode(name).from_config(None, 0)


def default_steps(d: int) -> int:
    return max(4, min(40, int(3e8 // d)))


def bench_size(d: int, args: argparse.Namespace) -> dict[str, float]:
    """Median ns per parameter per step of each mode's hooks (``off``: of the step)."""
    import torch

    from trajreg.record.recorder import Recorder

    torch.manual_seed(0)
    model = torch.nn.Linear(IN_FEATURES, d // IN_FEATURES, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    xb = torch.randn(BATCH, IN_FEATURES)
    yb = torch.randn(BATCH, d // IN_FEATURES)
    modes = [m for m in args.modes if m != "store" or d <= args.store_max]
    steps = args.steps or default_steps(d)
    spent: dict[str, list[float]] = {m: [] for m in modes}

    def train_step(rec: Recorder | None) -> float:
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        t0 = time.perf_counter_ns()
        if rec is not None:
            rec._pre_step(opt, (), {})
        t1 = time.perf_counter_ns()
        opt.step()
        t2 = time.perf_counter_ns()
        if rec is not None:
            rec._post_step(opt, (), {})
        t3 = time.perf_counter_ns()
        return (t1 - t0) + (t3 - t2)

    for r in range(args.repeats):
        for m in modes[r % len(modes):] + modes[: r % len(modes)]:
            if m == "off":
                for i in range(steps + 1):
                    t0 = time.perf_counter_ns()
                    train_step(None)
                    if i:
                        spent[m].append((time.perf_counter_ns() - t0) / d)
                continue
            tmp = Path(tempfile.mkdtemp(prefix="bench-hooks-"))
            try:
                rec = Recorder(opt, tmp / "trajectory", mode=make_mode(m), capacity=steps + 2)
                for h in rec._handles:  # called by hand in train_step, timed alone
                    h.remove()
                for i in range(steps + 1):
                    ns = train_step(rec)
                    if i:
                        spent[m].append(ns / d)
                if m.startswith("sketch") and rec.mode.identity:
                    spent.setdefault(m + ":I", [])
                rec.close()
                del rec
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    out = {m: med(v) for m, v in spent.items() if not m.endswith(":I")}
    out.update({m: 1.0 for m in spent if m.endswith(":I")})
    if args.parts:
        out.update(bench_parts(d, model, steps))
    return out


def bench_parts(d: int, model, steps: int) -> dict[str, float]:
    """The sketch mode's pieces, each timed alone (ns per parameter, median)."""
    import torch

    from trajreg.record.geometry import SquaredNorms
    from trajreg.record.modes.sketch import DEFAULT_DIM, TorchCountSketch

    w = model.weight.detach().reshape(-1)
    x = w.clone()
    g = torch.randn(d)
    k = min(DEFAULT_DIM, d)
    sk = TorchCountSketch(d, k, 12345)
    row = torch.empty(k, dtype=torch.float64)
    tmp = Path(tempfile.mkdtemp(prefix="bench-parts-"))
    out: dict[str, float] = {}
    try:
        s_norms = SquaredNorms(tmp / "s.bin", d, "cpu")
        g_norms = SquaredNorms(tmp / "g.bin", d, "cpu")
        pieces = {
            "part:flat copy": lambda: x.copy_(w),
            "part:sketch(x)": lambda: sk(x, out=row),
            "part:push_next": lambda: s_norms.push_next(x, 0.1),
            "part:push(g)": lambda: g_norms.push(g),
        }
        for name, fn in pieces.items():
            times = []
            for _ in range(steps + 1):
                t0 = time.perf_counter_ns()
                fn()
                times.append((time.perf_counter_ns() - t0) / d)
            out[name] = med(times[1:])
        s_norms.close()
        g_norms.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def plot(results: dict[int, dict[str, float]], modes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in modes:
        ds = [d for d in results if m in results[d]]
        label = "training step (off)" if m == "off" else m
        ax.loglog(ds, [results[d][m] for d in ds], marker="o", label=label,
                  linestyle="--" if m == "off" else "-")
    ax.axhline(5.0, color="grey", linewidth=0.8, linestyle=":", label="5 ns")
    ax.set_xlabel("parameters d")
    ax.set_ylabel("hooks, ns per parameter per step (median)")
    ax.set_title("Recorder hooks per parameter (bias-free Linear, batch 8, SGD, 1 thread)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7, 1e8])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps a repeat (default: 40 at small d down to 4 at 1e8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--store-max", type=float, default=1e7, help="largest d timed in store")
    p.add_argument("--parts", action="store_true", help="also time the sketch's pieces")
    p.add_argument("--out", type=Path, default=None, help="the plot (PNG)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    section(f"Recorder hooks, ns per parameter per step (median); commit {commit}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {args.threads} thread(s), load "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results: dict[int, dict[str, float]] = {}
    for size in args.sizes:
        d = int(round(size / IN_FEATURES)) * IN_FEATURES
        t0 = time.perf_counter()
        results[d] = bench_size(d, args)
        print(f"  d = {d:.0e}: {time.perf_counter() - t0:.0f} s", flush=True)
    cols = [m for m in MODES if m in args.modes]
    extra = sorted({k for r in results.values() for k in r if k.startswith("part:")})
    rows = []
    for d, r in results.items():
        cells = []
        for m in cols:
            v = r.get(m)
            cells.append("-" if v is None else f"{v:.2f}" + (" I" if m + ":I" in r else ""))
        rows.append([f"{d:.0e}", *cells, *(f"{r[e]:.2f}" if e in r else "-" for e in extra)])
    print()
    table(["d", *("step (off)" if m == "off" else m for m in cols),
           *(e.removeprefix("part:") for e in extra)], rows)
    print(f"\n  load at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.out is not None:
        plot(results, cols, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
