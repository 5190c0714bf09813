"""What ``record.curvature`` costs: the whole run, and one measured step.

Run by hand from the repository root::

    python benchmarks/bench_curvature.py [--repeats 5] [--epochs 30] [--threads 1]

Two measurements, each a ratio of timings taken in the same process run (the machine may
be shared and noisy: repeats are interleaved across variants and reported as medians;
targets are printed as PASS/FAIL for information only):

1. Whole run: ``trajreg.run.runner.run(cfg, out)`` into a fresh temp dir (train, measure,
   analysis, figures, files), store mode, with ``record.curvature`` at its default rate
   (``CurvatureConfig().rate``) and at 0.01 against without, on the small CNN
   (benchmarks/nets.py) and the demo MLP (configs/digits_mlp.yaml) at ``--epochs``. Each
   row says how many steps the seeded sample drew; lambda_max at x* (one Lanczos) is
   measured whatever the draw.
   Target at the default rate: <= 1.1x.
2. One sampled step in forward-backward equivalents: the wall time of
   ``record.curvature.measure_step`` on a kept row (l_t's graph, Lanczos of up to
   ``iterations`` Hessian-vector products, the curvature along the update, the critical
   sharpness's forward passes, and for Adam a second Lanczos on P^-1/2 H P^-1/2), divided
   by the time of one training step (forward, backward, optimizer step: ``train`` without
   a recorder, per step). The median over the kept rows of a short run at rate 1; the
   Lanczos iterations used are shown beside it.

Exit status 0 unless something crashed; missed targets never change it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from nets import SMALL_CNN, demo_mlp  # benchmarks/nets.py, beside this script
from report import med, section, table  # benchmarks/report.py, beside this script

from trajreg.train.config import CurvatureConfig  # noqa: E402

RATES = (None, CurvatureConfig().rate, 0.01)  # None: without record.curvature
TARGET = 1.1  # at the default rate
CRASHES: dict[str, str] = {}


def raw_config(model: str, optimizer: str | None = None) -> dict:
    raw = demo_mlp() if model == "mlp" else copy.deepcopy(SMALL_CNN)
    if optimizer == "adam":
        raw["optim"] = {"name": "adam", "lr": 1e-3}
    return raw


def make_config(model: str, epochs: int, rate: float | None, optimizer: str | None = None):
    from trajreg.train.config import load_config

    raw = raw_config(model, optimizer)
    raw.setdefault("train", {})["epochs"] = int(epochs)
    raw["record"] = {"mode": "store"}
    if rate is not None:
        raw["record"]["curvature"] = {"rate": rate}
    return load_config(raw)


def crash(what: str) -> str:
    exc = sys.exc_info()[1]
    CRASHES.setdefault(what, traceback.format_exc())
    return f"{type(exc).__name__}: {exc}"


def label(rate: float | None) -> str:
    return "without" if rate is None else f"rate {rate:g}"


def print_facts(args: argparse.Namespace) -> None:
    import torch

    import trajreg

    print("trajreg record.curvature benchmark")
    print(f"  command        : {shlex.join([sys.executable, *sys.argv])}")
    print(f"  date (UTC)     : {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}")
    print(f"  python, torch  : {platform.python_version()}, {torch.__version__}")
    print(f"  trajreg        : {trajreg.__version__}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"  usable cpus    : {cpus}; torch threads {torch.get_num_threads()}")
    load = os.getloadavg()
    print(f"  load average   : {' '.join(f'{x:.2f}' for x in load)}")
    if cpus and load[0] > cpus - 0.5:
        print("  WARNING        : the machine is busy (or just was): timings may be contended")
    print(f"  settings       : repeats={args.repeats} epochs={args.epochs} "
          f"step_epochs={args.step_epochs}")


def stopwatch():
    gc.collect()
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


# ----------------------------------------------------------------------------- part 1

def time_run(cfg) -> float:
    from trajreg.run.runner import run

    with tempfile.TemporaryDirectory(prefix="bench-curv-") as parent:
        elapsed = stopwatch()
        run(cfg, Path(parent) / "run", progress=False)
        return elapsed()


def bench_whole_run(args: argparse.Namespace) -> list[str]:
    from trajreg.record.curvature import curvature_steps
    from trajreg.train.data import load_data
    from trajreg.train.loop import total_steps

    section(f"1. Whole run: run(cfg, out) wall time, store mode, record.curvature vs without\n"
            f"   ({args.epochs} epochs, {args.repeats} repeats interleaved over the variants "
            "after one untimed warm-up of each)")
    verdicts, rows = [], []
    for model in ("cnn", "mlp"):
        try:
            cfgs = {rate: make_config(model, args.epochs, rate) for rate in RATES}
            base = cfgs[None]
            T = total_steps(base, load_data(base.data))
            for rate in RATES:
                time_run(cfgs[rate])  # warm-up
            times: dict[float | None, list[float]] = {rate: [] for rate in RATES}
            for r in range(args.repeats):
                order = RATES[r % len(RATES):] + RATES[:r % len(RATES)]
                for rate in order:
                    times[rate].append(time_run(cfgs[rate]))
                print(f"  [{model}] repeat {r + 1}/{args.repeats}: " + "  ".join(
                    f"{label(rate)}={times[rate][-1]:.3f}s" for rate in RATES), flush=True)
        except Exception:
            print(f"  [{model}] CRASHED: {crash('whole run ' + model)}")
            continue
        for rate in RATES:
            t = times[rate]
            if rate is None:
                rows.append([model, T, label(rate), "", f"{med(t):.3f}", f"{min(t):.3f}",
                             "1 (base)", "", "", ""])
                continue
            n = len(curvature_steps(T, rate, base.seed))
            ratio = med(t) / med(times[None])
            paired = med([a / b for a, b in zip(t, times[None], strict=True)])
            mins = min(t) / min(times[None])
            default = rate == CurvatureConfig().rate
            check = ("PASS" if ratio <= TARGET else "FAIL") if default else ""
            rows.append([model, T, label(rate), n, f"{med(t):.3f}", f"{min(t):.3f}",
                         f"{ratio:.3f}x", f"{paired:.3f}x", f"{mins:.3f}x", check])
            if check:
                verdicts.append(f"whole run {model} at the default rate: {ratio:.3f}x "
                                f"(target <= {TARGET}x) {check}")
    print()
    table(["model", "steps", "curvature", "sampled_steps", "median_s", "min_s",
           "ratio_of_medians", "paired_median", "ratio_of_mins", "verdict"], rows)
    print("  sampled_steps: the steps the seeded sample drew (the run's seed); lambda_max at "
          "x* is measured besides.\n  ratio_of_medians = median(x) / median(without): the "
          "verdict; paired_median = the median over repeats of x / without;\n  "
          "ratio_of_mins = min(x) / min(without), the least disturbed timings.")
    return verdicts


# ----------------------------------------------------------------------------- part 2

def train_step_seconds(cfg, data, repeats: int) -> float:
    """The median over ``repeats`` fresh trainings of (wall time of train) / steps."""
    from trajreg.train.loop import build, train

    out = []
    for _ in range(repeats):
        model, opt, sched = build(cfg, data)
        elapsed = stopwatch()
        log = train(cfg, data, model, opt, sched, eval_full=False, progress=False)
        out.append(elapsed() / len(log.loss))
    return med(out)


def measured_steps(cfg, data, limit: int) -> tuple[list[float], list[float], list[int], int]:
    """Train with every step's row kept, then time ``measure_step`` on up to ``limit``
    rows spread over the run, with and without the critical sharpness: (seconds of each,
    seconds without the critical sharpness, Lanczos iterations of each, d)."""
    from trajreg.record.curvature import measure_step, read_rows
    from trajreg.record.recorder import Recorder
    from trajreg.run.runner import RunContext
    from trajreg.train.loop import build, train

    options = cfg.record.curvature
    model, opt, sched = build(cfg, data)
    with tempfile.TemporaryDirectory(prefix="bench-curv-rows-") as tmp:
        with Recorder(opt, tmp, mode="off", curvature=(1.0, cfg.seed)):
            log = train(cfg, data, model, opt, sched, eval_full=False, progress=False)
        rows = read_rows(Path(tmp))
    rows = rows[:: max(1, len(rows) // limit)][:limit]
    ctx = RunContext(cfg, data, log, model, model.state_dict(), Path("."))
    seconds, without, iterations = [], [], []
    for row in rows:
        ctx.load(row.x)
        params = ctx.curvature_parameters()
        for critical, out in ((True, seconds), (False, without)):
            elapsed = stopwatch()
            c = measure_step(params, lambda t=row.step: ctx.step_loss(t), row,
                             iterations=options.iterations, tol=options.tol, seed=cfg.seed,
                             critical=critical)
            out.append(elapsed())
        iterations.append(c.iterations)
    return seconds, without, iterations, sum(p.numel() for p in params)


def bench_step(args: argparse.Namespace) -> None:
    from trajreg.train.data import load_data

    section("2. One sampled step: measure_step's wall time / one training step's "
            f"(forward-backward equivalents)\n   (a {args.step_epochs}-epoch run per net, "
            f"{args.rows} rows spread over it, default iterations 20 and tol 1e-3)")
    rows = []
    for model, optimizer in (("cnn", None), ("cnn", "adam"), ("mlp", None)):
        name = f"{model}/{optimizer or raw_config(model)['optim']['name']}"
        try:
            cfg = make_config(model, args.step_epochs, 1.0, optimizer)
            data = load_data(cfg.data)
            train_step_seconds(cfg, data, 1)  # warm-up
            step = train_step_seconds(cfg, data, args.repeats)
            seconds, without, iterations, d = measured_steps(cfg, data, args.rows)
        except Exception:
            print(f"  [{name}] CRASHED: {crash('step ' + name)}")
            continue
        rows.append([name, d, f"{step * 1e3:.2f}", f"{med(seconds) * 1e3:.1f}",
                     f"{med(seconds) / step:.1f}",
                     f"{min(seconds) / step:.1f}-{max(seconds) / step:.1f}",
                     f"{med(without) / step:.1f}", f"{med(iterations):g}"])
        print(f"  [{name}] done", flush=True)
    print()
    table(["net/optimizer", "d", "train_step_ms", "measured_step_ms", "fb_equivalents",
           "range", "without_critical", "lanczos_iterations"], rows)
    print("  fb_equivalents = median measured step / median training step; range: the "
          "fastest and slowest rows;\n  without_critical: the same with critical=False (no "
          "forward passes along the update). Adam measures a second\n  Lanczos "
          "(lambda_max_precond).")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30, help="epochs of the whole runs")
    p.add_argument("--step-epochs", type=int, default=3, help="epochs of part 2's runs")
    p.add_argument("--rows", type=int, default=12, help="rows part 2 measures per net")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=("run", "step"))
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print_facts(args)
    verdicts = []
    if args.only in (None, "run"):
        verdicts = bench_whole_run(args)
    if args.only in (None, "step"):
        bench_step(args)
    section("Summary")
    for line in verdicts:
        print("  " + line)
    for what, tb in CRASHES.items():
        print(f"  CRASH in {what}:\n{tb}")
    return 1 if CRASHES else 0


if __name__ == "__main__":
    sys.exit(main())
