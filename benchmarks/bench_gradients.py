"""What recording the gradients g_t costs in record mode store.

Run by hand from the repository root::

    python benchmarks/bench_gradients.py [--repeats N] [--epochs E] [--threads N]

Two measurements, each a ratio of medians of timings taken in this one process, the
variants interleaved repeat by repeat (the machine may be shared: medians of
interleaved repeats are steadier than single timings):

1. whole run, ``run(cfg, out, figures=False)`` into a fresh directory (train, measure,
   analysis, files), ``record: {mode: store, gradients: true}`` against the same run
   with ``gradients: false``, on the demo MLP (configs/digits_mlp.yaml) and a small CNN.
   Both variants evaluate the interpolation from x_0 to x* (``mli``), which does not
   depend on the gradients; its own time is reported beside them.
2. training alone, ``train(..., eval_full=False)`` with a store-mode ``Recorder`` that
   records g_t against one that does not (the copy of p.grad into the second store).

Disk: the gradients double the trajectory (one more d-row a step); the sizes are
printed. The script exits 0 unless a run raised.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nets import SMALL_CNN, demo_mlp  # benchmarks/nets.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CNN = SMALL_CNN


def config(model: str, gradients: bool, epochs: int):
    from trajreg.train.config import load_config

    raw = demo_mlp() if model == "mlp" else copy.deepcopy(CNN)
    raw.setdefault("train", {})["epochs"] = epochs
    raw["record"] = {"mode": "store", "gradients": gradients}
    return load_config(raw)


def clock():
    """Wall seconds since the call (after a garbage collection)."""
    gc.collect()
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def cpu_clock():
    """Process CPU seconds since the call: less disturbed by other processes than wall
    time on a busy machine."""
    c0 = time.process_time()
    return lambda: time.process_time() - c0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def whole_runs(model: str, repeats: int, epochs: int) -> dict:
    from trajreg.run import runner

    spent: list[float] = []
    inner = runner.RunContext.interpolated_losses

    def timed(self, *args, **kwargs):  # the interpolation's share of a run
        done = clock()
        try:
            return inner(self, *args, **kwargs)
        finally:
            spent.append(done())

    runner.RunContext.interpolated_losses = timed
    cfgs = {g: config(model, g, epochs) for g in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    sizes: dict[bool, int] = {}
    try:
        for r in range(repeats + 1):  # the first round warms up, untimed
            for g in (False, True):
                with tempfile.TemporaryDirectory(prefix="bench-grad-") as tmp:
                    done, used = clock(), cpu_clock()
                    out, _ = runner.run(cfgs[g], Path(tmp) / "run", figures=False,
                                        progress=False)
                    wall, seconds = done(), used()
                    sizes[g] = du(out / "trajectory")
                if r:
                    times[g].append(wall)
                    cpu[g].append(seconds)
            if r:
                print(f"  [{model}] repeat {r}/{repeats}: without {times[False][-1]:.3f} s, "
                      f"with {times[True][-1]:.3f} s", flush=True)
    finally:
        runner.RunContext.interpolated_losses = inner
    return {"times": times, "cpu": cpu, "sizes": sizes, "mli": spent[2:]}


def training_alone(model: str, repeats: int, epochs: int) -> dict[bool, list[float]]:
    from trajreg.record.modes.store import StoreMode
    from trajreg.record.recorder import Recorder
    from trajreg.train.data import load_data
    from trajreg.train.loop import build, total_steps, train

    cfg = config(model, False, epochs)
    data = load_data(cfg.data)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats + 1):
        for g in (False, True):
            net, opt, sched = build(cfg, data)
            with tempfile.TemporaryDirectory(prefix="bench-grad-") as tmp:
                rec = Recorder(opt, Path(tmp) / "trajectory", mode=StoreMode(gradients=g),
                               capacity=total_steps(cfg, data) + 1)
                done = clock()
                train(cfg, data, net, opt, sched, eval_full=False, progress=False)
                rec.close()
                if r:
                    times[g].append(done())
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args(argv)
    import torch

    import trajreg

    torch.set_num_threads(args.threads)
    print(f"trajreg gradient-recording benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC")
    print(f"  python {platform.python_version()}, torch {torch.__version__}, trajreg "
          f"{trajreg.__version__}, {torch.get_num_threads()} thread(s), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  {args.repeats} interleaved repeats after one warm-up round, {args.epochs} epochs")
    med = statistics.median
    for model in args.models.split(","):
        w = whole_runs(model, args.repeats, args.epochs)
        t = training_alone(model, args.repeats, args.epochs)
        off, on = w["times"][False], w["times"][True]
        print(f"\n  {model}: whole run, store with gradients / without: "
              f"{med(on) / med(off):.3f}x (medians {med(on):.3f} s / {med(off):.3f} s; "
              f"paired median {med([a / b for a, b in zip(on, off, strict=True)]):.3f}x; "
              f"CPU seconds {med(w['cpu'][True]) / med(w['cpu'][False]):.3f}x)")
        print(f"  {model}: training alone, recorder with gradients / without: "
              f"{med(t[True]) / med(t[False]):.3f}x (medians {med(t[True]):.3f} s / "
              f"{med(t[False]):.3f} s)")
        print(f"  {model}: the interpolation (21 points, F_0 and F_T from the log), in both: "
              f"median "
              f"{med(w['mli']):.3f} s, {med(w['mli']) / med(off):.1%} of the run without "
              "gradients")
        print(f"  {model}: trajectory on disk: {w['sizes'][True] / 2**20:.1f} MiB with "
              f"gradients, {w['sizes'][False] / 2**20:.1f} MiB without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
