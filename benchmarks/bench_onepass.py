"""What the one-pass record modes cost and how accurate the sketch is.

Run by hand from the repository root::

    python benchmarks/bench_onepass.py [--repeats N] [--quick] [--threads N] [--only PART]

Six parts (timings are interleaved across modes in one process and reported as
ratios of medians, the house style of bench_recording.py; the machine may be shared):

1. ``run``: whole run, ``run(cfg, out, figures=False)`` into a fresh directory (train +
   measure + analysis + files) of the small CNN on digits (30 epochs), record modes
   ``sample`` (R = 0.05), ``sketch`` (default k; the CNN has d = 6090 <= k, so it keeps
   x_t itself), ``sketch/no-grad`` (the same without the gradients, which sample and
   sketch record by default), ``sketch/bare`` (without the gradients and the
   interpolation, ``record.interpolation: false``), ``sketch/k2048`` (hashed) and
   ``store``, each against ``off``.
2. ``train``: training alone, ``train(eval_full=False)`` with a Recorder of each mode
   attached against none (the recorder's overhead during training).
3. ``rss``: peak RSS (``ru_maxrss`` of a fresh child process) of a sample and a sketch
   run at 10 and 40 epochs: memory must not grow with the run length.
4. ``accuracy``: gamma_hat(eps) from CountSketches of k numbers against the exact value,
   on store-mode trajectories of the demo MLP (d = 22090), the mnist1d MLP (d = 39562), a
   wider CNN (width 48, d = 46186) and ResNet-20 at width 0.25 (d = 17426; mnist5k, 2048
   images at 16x16), 3 run seeds x 4 hash seeds (the run's own and 11, 12, 13), for
   k = 1024 ... 16384 below d. The sketches are the record mode's own
   (``TorchCountSketch``), D_t and a_t from ``sketch_quantities`` with the exact s_t, b_t
   exact: what mode sketch reports. Then one real sketch-mode run per net and seed at the
   default k, its gamma_hat(0.05) against the exact value. ``--nets`` picks nets (also
   ``resnet20-w0.5``, d = 68250, and issue 19's nets of 10^5-10^6 parameters, not in the
   default set: ``mlp-w192``, ``mlp-w512``, ``mnist1d-mlp-w512``, ``cnn-w256`` and its
   ``-adam`` and ``-sgd`` variants, ``cnn-w96-sgd``); ``--dims``, ``--seeds`` and
   ``--hash-seeds`` pick k, run seeds and how many hash seeds besides the run's own,
   ``--no-sketch-run`` skips the sketch-mode run. A second table says how often a check
   sample of n window steps (sketch_error's gamma-level figure) reports more than 10%
   when the whole window's error is above 10% (flagged) and below 5% (false alarms).
5. ``floor``: what a run measuring b_t at every step cannot avoid (the forward passes at
   x* and the interpolation) against ``off``.
6. ``cold``: the hooks of sample and sketch timed on their own and right after a forward
   (and backward) pass: the same calls cost 2-6x more between training steps.

Exit status 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from nets import SMALL_CNN, demo_mlp  # benchmarks/nets.py, beside this script
from report import med, section, table  # benchmarks/report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
CNN = SMALL_CNN
MLP = demo_mlp()
# variant -> record section
VARIANTS = {
    "off": {"mode": "off"},
    "sample": {"mode": "sample", "sample_rate": 0.05},
    "sketch": {"mode": "sketch"},
    "sketch/no-grad": {"mode": "sketch", "gradients": False},
    # the sketch as issue 12 specified it: without issue 14's gradients and interpolation
    "sketch/bare": {"mode": "sketch", "gradients": False, "interpolation": False},
    "sketch/k2048": {"mode": "sketch", "sketch_dim": 2048},
    "store": {"mode": "store"},
}
CRASHES: dict[str, str] = {}
SUMMARY: list[str] = []


def config(raw: dict, record: dict, epochs: int, seed: int | None = None, **model):
    from trajreg.train.config import load_config

    raw = copy.deepcopy(raw)
    raw["train"]["epochs"] = int(epochs)
    raw["record"] = dict(record)
    raw["model"].update(model)
    if seed is not None:
        raw["seed"] = seed
    return load_config(raw)


def crash(what: str) -> str:
    exc = sys.exc_info()[1]
    CRASHES.setdefault(what, traceback.format_exc())
    return f"{type(exc).__name__}: {exc}"


def stopwatch():
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    return lambda: (time.perf_counter() - t0, time.process_time() - c0)


# ----------------------------------------------------------------------------- part 1

def bench_run(args: argparse.Namespace) -> None:
    from trajreg.run.runner import run

    section(f"1. Whole run of the small CNN on digits ({args.epochs} epochs, figures off), "
            f"{args.repeats} interleaved repeats after a warm-up")
    cfgs = {v: config(CNN, rec, args.epochs) for v, rec in VARIANTS.items()}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(-1, args.repeats):
        for v, cfg in cfgs.items():
            with tempfile.TemporaryDirectory(prefix="bench-onepass-") as parent, \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sample: few window samples at 5%
                elapsed = stopwatch()
                try:
                    run(cfg, Path(parent) / "run", figures=False, progress=False)
                except Exception:
                    print(f"  [{v}] CRASHED: {crash('run ' + v)}")
                w, c = elapsed()
            if r >= 0:
                wall[v].append(w)
                cpu[v].append(c)
        if r >= 0:
            print(f"  repeat {r + 1}/{args.repeats}: "
                  + "  ".join(f"{v}={wall[v][-1]:.2f}s" for v in VARIANTS), flush=True)
    rows = []
    for v in VARIANTS:
        ratio = med(wall[v]) / med(wall["off"])
        rows.append([v, f"{med(wall[v]):.3f}", f"{min(wall[v]):.3f}", f"{ratio:.3f}x",
                     f"{min(wall[v]) / min(wall['off']):.3f}x",
                     f"{med(cpu[v]) / med(cpu['off']):.3f}x"])
        if v != "off":
            SUMMARY.append(f"whole run  cnn {v:<13} {ratio:.3f}x off")
    print()
    table(["mode", "median_s", "min_s", "ratio_of_medians", "ratio_of_mins", "cpu_ratio"], rows)


# ----------------------------------------------------------------------------- part 2

def _timed_hooks(mode, spent: list[int]) -> None:
    """Wrap the mode's hooks to add their thread CPU nanoseconds to ``spent[0]``."""
    for name in ("pre_step", "post_step", "close"):
        hook = getattr(mode, name)

        def timed(*a, _hook=hook, **kw):
            t0 = time.thread_time_ns()
            try:
                return _hook(*a, **kw)
            finally:
                spent[0] += time.thread_time_ns() - t0

        setattr(mode, name, timed)


def bench_train(args: argparse.Namespace) -> None:
    from trajreg.record.modes import get_mode
    from trajreg.record.recorder import Recorder
    from trajreg.train.data import load_data
    from trajreg.train.loop import build, total_steps, train

    section(f"2. Training alone (train(eval_full=False), {args.epochs} epochs of the CNN) with "
            f"a Recorder of each mode vs none, {args.repeats} interleaved repeats")
    modes = [v for v in VARIANTS if v != "off"]
    base = config(CNN, {"mode": "off"}, args.epochs)
    data = load_data(base.data)
    names = ["none", *modes]
    wall: dict[str, list[float]] = {v: [] for v in names}
    cpu: dict[str, list[float]] = {v: [] for v in names}  # the training thread's CPU
    hooks: dict[str, list[float]] = {v: [] for v in names}  # of which in the mode's hooks
    for r in range(-1, args.repeats):
        for v in names:
            cfg = base if v == "none" else config(CNN, VARIANTS[v], args.epochs)
            model, opt, sched = build(cfg, data)
            spent = [0]
            with tempfile.TemporaryDirectory(prefix="bench-onepass-") as tmp:
                rec = None
                if v != "none":
                    mode = get_mode(cfg.record.mode).from_config(cfg.record, cfg.seed)
                    _timed_hooks(mode, spent)
                    rec = Recorder(opt, Path(tmp) / "trajectory", mode=mode,
                                   capacity=total_steps(cfg, data) + 1)
                elapsed = stopwatch()
                c0 = time.thread_time()
                train(cfg, data, model, opt, sched, eval_full=False, progress=False)
                if rec is not None:
                    rec.close()
                c = time.thread_time() - c0
                w, _ = elapsed()
            if r >= 0:
                wall[v].append(w)
                cpu[v].append(c)
                hooks[v].append(spent[0] * 1e-9)
        if r >= 0:
            print(f"  repeat {r + 1}/{args.repeats}: "
                  + "  ".join(f"{v}={wall[v][-1]:.3f}s" for v in wall), flush=True)
    steps = total_steps(base, data)
    rows = []
    for v in names:
        ratio = med(wall[v]) / med(wall["none"])
        cratio = med(cpu[v]) / med(cpu["none"])
        per_step = med(hooks[v]) / steps * 1e6
        share = med(hooks[v]) / med(cpu["none"])
        rows.append([v, steps, f"{med(wall[v]):.3f}", f"{ratio:.3f}x", f"{cratio:.3f}x",
                     f"{per_step:.0f}", f"{100 * share:.1f}%"])
        if v != "none":
            SUMMARY.append(f"training   cnn {v:<13} hooks {per_step:.0f} us/step CPU = "
                           f"{100 * share:.1f}% of training's CPU (wall {ratio:.3f}x, "
                           f"thread CPU {cratio:.3f}x)")
    print()
    table(["recorder", "steps", "median_s", "wall_ratio", "thread_cpu_ratio",
           "hook_cpu_us/step", "hooks/training_cpu"], rows)
    print("  hook_cpu: thread CPU time inside the mode's pre_step/post_step/close (the "
          "recorder's whole cost in the\n  training thread; store's disk writes run in its "
          "writer thread), median over repeats; hooks/training_cpu:\n  that over the median "
          "thread CPU of training without a recorder. Thread CPU time does not count\n  "
          "waiting for a busy CPU.")


# ----------------------------------------------------------------------------- floor

def bench_floor(args: argparse.Namespace) -> None:
    """What a run measuring b_t at every step cannot avoid: per step the forward pass at
    x* (``RunContext.step_losses``, inference mode, one minibatch a pass), and once the
    interpolation's full-loss evaluations (``interpolated_losses``), against what ``off``
    does (training with F after every epoch). Thread CPU seconds, median over repeats."""
    import numpy as np

    from trajreg import principle as P
    from trajreg.record.geometry import MLI_POINTS
    from trajreg.record.recorder import flat_params
    from trajreg.run.runner import RunContext
    from trajreg.train.data import load_data
    from trajreg.train.loop import batches, build, minibatch_loss, train

    section(f"5. The floor of a run that measures b_t at every step (the CNN, {args.epochs} "
            f"epochs, thread CPU seconds, median of {args.repeats})")
    cfg = config(CNN, {"mode": "off"}, args.epochs)
    data = load_data(cfg.data)
    parts: dict[str, list[float]] = {k: [] for k in (
        "forward", "backward", "step", "train_off", "x*_forwards", "mli")}
    for _ in range(args.repeats):
        model, opt, sched = build(cfg, data)  # one training pass, phase by phase
        fw = bw = st = 0.0
        for step, _, idx in batches(cfg, data):
            t0 = time.thread_time()
            loss = minibatch_loss(cfg, model, data, idx, step)
            loss.item()
            t1 = time.thread_time()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.thread_time()
            opt.step()
            sched.step()
            t3 = time.thread_time()
            fw, bw, st = fw + t1 - t0, bw + t2 - t1, st + t3 - t2
        parts["forward"].append(fw)
        parts["backward"].append(bw)
        parts["step"].append(st)
        model, opt, sched = build(cfg, data)  # what mode off does: train() with F_k
        x0 = flat_params(list(model.parameters())).detach().numpy().astype(np.float64)
        t0 = time.thread_time()
        log = train(cfg, data, model, opt, sched, progress=False)
        parts["train_off"].append(time.thread_time() - t0)
        x_star = flat_params(list(model.parameters())).detach().numpy().astype(np.float64)
        with tempfile.TemporaryDirectory(prefix="bench-onepass-floor-") as tmp:
            ctx = RunContext(cfg, data, log, model, {}, Path(tmp), progress=False)
            ctx.load(x_star)
            t0 = time.thread_time()
            ctx.step_losses(range(log.steps))
            parts["x*_forwards"].append(time.thread_time() - t0)
            t0 = time.thread_time()
            ctx.interpolated_losses(P.mli_alphas(MLI_POINTS), x0, x_star)
            parts["mli"].append(time.thread_time() - t0)
    m = {k: med(v) for k, v in parts.items()}
    train_step = m["forward"] + m["backward"] + m["step"]
    rows = [[k, f"{v:.3f}"] for k, v in m.items()]
    table(["part", "thread_cpu_s"], rows)
    floor_bt = (m["train_off"] + m["x*_forwards"]) / m["train_off"]
    floor = (m["train_off"] + m["x*_forwards"] + m["mli"]) / m["train_off"]
    print(f"\n  x* forwards / (forward + backward + step) = {m['x*_forwards'] / train_step:.3f}"
          f"; training forward / (forward + backward + step) = {m['forward'] / train_step:.3f}")
    print(f"  floor of a whole run vs off (training with F_k): with b_t at every step "
          f"{floor_bt:.3f}x, and the interpolation {floor:.3f}x")
    SUMMARY.append(f"floor      cnn b_t at every step {floor_bt:.3f}x off, with the "
                   f"interpolation {floor:.3f}x (x* forwards = "
                   f"{m['x*_forwards'] / train_step:.2f} of a training step's CPU)")


# ----------------------------------------------------------------------------- part 3

def child_main(spec: dict) -> None:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from trajreg.run.runner import run

    cfg = config(CNN, VARIANTS[spec["variant"]], spec["epochs"])
    parent = Path(tempfile.mkdtemp(prefix="bench-onepass-rss-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(cfg, parent / "run", figures=False, progress=False)
        disk = sum(f.stat().st_size for f in (parent / "run").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print("RESULT " + json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                  "disk": disk}), flush=True)


def bench_rss(args: argparse.Namespace) -> None:
    section("3. Peak RSS of a fresh child process running the CNN, 10 vs 40 epochs")
    rows = []
    for v in ("sample", "sketch", "sketch/k2048"):
        res = {}
        for epochs in (10, 40):
            spec = {"variant": v, "epochs": epochs, "threads": args.threads}
            # forked by a shell that does not exec it: ru_maxrss starts fresh
            cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable,
                   str(Path(__file__).resolve()), "--child", json.dumps(spec)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                CRASHES[f"rss {v} {epochs}"] = proc.stderr[-3000:]
                print(f"  [{v}/{epochs}] CHILD FAILED: {proc.stderr.strip()[-300:]}")
                continue
            res[epochs] = json.loads(lines[-1][len("RESULT "):])
        if len(res) == 2:
            ratio = res[40]["peak_kib"] / res[10]["peak_kib"]
            rows.append([v, f"{res[10]['peak_kib'] / 1024:.1f}",
                         f"{res[40]['peak_kib'] / 1024:.1f}", f"{ratio:.3f}x",
                         f"{res[10]['disk'] / 2**20:.1f}",
                         f"{res[40]['disk'] / 2**20:.1f}"])
            SUMMARY.append(f"peak rss   cnn {v:<13} 40/10 epochs {ratio:.3f}x")
    table(["mode", "peak_10_MiB", "peak_40_MiB", "ratio", "run_dir_10_MiB", "run_dir_40_MiB"],
          rows)


# ----------------------------------------------------------------------------- part 4

# The nets of the accuracy part: name -> (base config, model overrides, epochs, quick
# epochs). The demo MLP and the CNN at width 48 are the digits nets of the first table;
# the mnist1d MLP and ResNet-20 are the activation-mlp and skip-resnet blocks of the quick
# paper preset (trajreg/study/presets/paper-quick.yaml), with their data and optimizer.
MNIST1D_MLP = {
    "seed": 0,
    "data": {"name": "mnist1d", "batch_size": 32},
    "model": {"name": "mlp", "depth": 4, "width": 128, "activation": "relu", "norm": "none",
              "init": "kaiming"},
    "optim": {"name": "momentum", "lr": 0.01},
    "train": {"device": "cpu"},
}
RESNET20 = {
    "seed": 0,
    "data": {"name": "mnist5k", "subset": 2048, "resize": 16, "batch_size": 32},
    "model": {"name": "resnet", "variant": "resnet20", "width": 0.25, "norm": "batch",
              "activation": "relu", "init": "kaiming", "skip": True},
    "optim": {"name": "momentum", "lr": 0.01},
    "train": {"device": "cpu"},
}
ACC_NETS: dict[str, tuple[dict, dict, int, int]] = {
    "mlp": (MLP, {}, 30, 10),
    "mnist1d-mlp": (MNIST1D_MLP, {}, 10, 4),
    "cnn-w48": (CNN, {"width": 48}, 30, 10),
    "resnet20": (RESNET20, {}, 6, 3),
    # not in the default set: 4x the parameters (a sketch 8x smaller than x), ~3x the time
    "resnet20-w0.5": (RESNET20, {"width": 0.5}, 6, 3),
    # nets of 10^5 - 10^6 parameters (issue 19): the demo MLP and the mnist1d MLP widened;
    # 15 (4) epochs make runs of 330 (500) steps, the length of the issue's short runs
    "mlp-w192": (MLP, {"width": 192}, 15, 6),  # d = 164 554
    "mlp-w512": (MLP, {"width": 512}, 15, 6),  # d = 1 094 154
    "mnist1d-mlp-w512": (MNIST1D_MLP, {"width": 512}, 4, 2),  # d = 551 434
    # the issue's net: the small CNN at width 256, d = 1 204 746, 9 epochs = 198 steps
    "cnn-w256": (CNN, {"width": 256}, 9, 4),
    # the same with Adam (lr 1e-3): its updates make a small angle's worth of progress
    # towards x*, so gamma is small against the sketch's noise in a_t
    "cnn-w256-adam": ({**CNN, "optim": {"name": "adam", "lr": 1e-3}}, {"width": 256}, 9, 4),
    # and with plain SGD at a large step (delta_t s_t close to a_t: a small gamma)
    "cnn-w256-sgd": ({**CNN, "optim": {"name": "sgd", "lr": 0.2}}, {"width": 256}, 9, 4),
    "cnn-w96-sgd": ({**CNN, "optim": {"name": "sgd", "lr": 0.2}}, {"width": 96}, 9, 4),
}
DEFAULT_NETS = ("mlp", "mnist1d-mlp", "cnn-w48", "resnet20")
ACC_DIMS = (1024, 2048, 4096, 8192, 16384)
ACC_EPS = (0.0, 0.05)
ACC_HASH_SEEDS = (11, 12, 13)  # besides the run's own (the mode's hash_seed(run seed))


def sketched_gamma(store, T: int, s, b, lrs, window, k: int, seed: int,
                   eps: tuple[float, ...], a_out: list | None = None) -> dict[float, float]:
    """gamma_hat(eps) on ``window`` from CountSketches S x_t (k numbers, hash ``seed``) of
    the stored iterates: the mode's own ``TorchCountSketch`` and ``sketch_quantities``
    with the exact s_t, b_t exact, as mode sketch computes them. ``a_out`` gets the
    sketched a_t of every step."""
    import numpy as np
    import torch

    from trajreg.principle import default_delta, gamma_hat, sketch_quantities
    from trajreg.record.modes.sketch import TorchCountSketch

    cs = TorchCountSketch(store.d, k, seed)
    sk = np.empty((T + 1, k))
    for t0, xs in store.blocks(T, block_rows=64):
        for i, row in enumerate(xs):
            sk[t0 + i] = cs(torch.from_numpy(np.ascontiguousarray(row))).numpy()
    q = sketch_quantities(sk, lrs[:T], sk[T], s=s)
    lo, hi = window
    delta = default_delta(lrs[:T])
    if a_out is not None:
        a_out.append(q.a)
    return {e: gamma_hat(q.a[lo:hi], b[lo:hi], s[lo:hi], delta[lo:hi], e) for e in eps}


CHECK_SIZES = (16, 32, 64, 100)  # check-sample steps in the window (simulated)


def check_power(a_sk, a_ex, b, s, delta, full_rel: float, rng, draws: int = 200
                ) -> dict[int, float]:
    """How often a check sample of n window steps (the gamma-level figure of
    ``sketch_error``: gamma_hat(0.05) of the sketched against the exact r_t on the same
    steps) reports more than 10%, for each n of CHECK_SIZES: the fraction of ``draws``
    random check samples (``full_rel`` is the full window's own error, for the caller)."""
    import numpy as np

    from trajreg.principle import gamma_hat

    out = {}
    for n in CHECK_SIZES:
        if n > len(a_ex):
            continue
        flagged = 0
        for _ in range(draws):
            i = np.sort(rng.choice(len(a_ex), n, replace=False))
            ex = gamma_hat(a_ex[i], b[i], s[i], delta[i], 0.05)
            sk = gamma_hat(a_sk[i], b[i], s[i], delta[i], 0.05)
            flagged += bool(abs(sk - ex) > 0.10 * abs(ex))
        out[n] = flagged / draws
    return out


def _rel(got: float, exact: float) -> float:
    """|got / exact - 1|; nan where the exact value is 0 or not finite."""
    return abs(got / exact - 1.0) if exact != 0.0 and math.isfinite(exact) else math.nan


def bench_accuracy(args: argparse.Namespace) -> None:
    """For each net and run seed: one store-mode run (the exact gamma_hat), the sketch's
    gamma_hat for every k and hash seed computed from the stored iterates (no retraining),
    and one real sketch-mode run at the default k whose gamma_hat is compared with the
    exact value (it trains the same trajectory: the recorder does not touch training)."""
    import numpy as np
    import pandas as pd

    from trajreg.principle import default_delta
    from trajreg.record.modes.sketch import DEFAULT_DIM, hash_seed
    from trajreg.record.store import TrajectoryStore
    from trajreg.run.runner import run

    seeds = tuple(args.seeds) if args.seeds else (0, 1, 2) if not args.quick else (0,)
    nets = args.nets or list(DEFAULT_NETS)
    acc_dims = tuple(args.dims) if args.dims else ACC_DIMS
    hash_seeds = ACC_HASH_SEEDS[: args.hash_seeds]
    rng = np.random.default_rng(0)
    power: dict[tuple[str, int], list[tuple[float, dict[int, float]]]] = {}
    section(f"4. Sketch accuracy: |gamma_hat_sketch / gamma_hat_exact - 1| over run seeds "
            f"{seeds} x hash seeds (the run's own, {', '.join(map(str, hash_seeds))}); "
            f"store-mode runs, nets {', '.join(nets)}")
    errs: dict[tuple[str, int, float], list[float]] = {}
    real: dict[str, list[tuple[int, float, float, float]]] = {}  # net -> (seed, exact, got, own)
    dims: dict[str, int] = {}
    for name in nets:
        raw, over, epochs, quick_epochs = ACC_NETS[name]
        epochs = quick_epochs if args.quick else epochs
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix="bench-onepass-acc-") as parent:
                try:
                    t0 = time.perf_counter()
                    out, summ = run(config(raw, {"mode": "store"}, epochs, seed, **over),
                                    Path(parent) / "store", figures=False, progress=False)
                    t_store = time.perf_counter() - t0
                    table_ = pd.read_parquet(out / "metrics.parquet")
                    store = TrajectoryStore(out / "trajectory")
                    dims[name] = store.d
                    T = summ.n_steps
                    s, b = table_["s"].to_numpy(), table_["b"].to_numpy()
                    lrs = table_["lr"].to_numpy()
                    own = hash_seed(seed)  # what a sketch-mode run of this seed hashes with
                    own_default = math.nan
                    lo, hi = summ.window
                    a_ex = table_["a"].to_numpy()[lo:hi]
                    delta = default_delta(lrs)[lo:hi]
                    for k in acc_dims:
                        if k >= store.d:
                            continue  # the mode keeps x itself (S = I): exact
                        for h in (own, *hash_seeds):
                            a_sk: list = []
                            got = sketched_gamma(store, T, s, b, lrs, summ.window, k, h,
                                                 ACC_EPS, a_sk)
                            for e in ACC_EPS:
                                errs.setdefault((name, k, e), []).append(
                                    _rel(got[e], summ.gamma_hat[str(e)]))
                            if k == DEFAULT_DIM and h == own:
                                own_default = got[0.05]
                            full = _rel(got[0.05], summ.gamma_hat["0.05"])
                            power.setdefault((name, k), []).append((full, check_power(
                                a_sk[0][lo:hi], a_ex, b[lo:hi], s[lo:hi], delta, full, rng)))
                    shutil.rmtree(out / "trajectory")  # the disk for the sketch run
                    if args.no_sketch_run:
                        print(f"  [{name} d={store.d} seed {seed}] T={T} window={summ.window} "
                              f"exact gamma_hat(0.05)={summ.gamma_hat['0.05']:.4g}; store run "
                              f"{t_store:.1f}s", flush=True)
                        continue
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        _, sk = run(config(raw, {"mode": "sketch"}, epochs, seed, **over),
                                    Path(parent) / "sketch", figures=False, progress=False)
                    t_sketch = time.perf_counter() - t0
                    exact = summ.gamma_hat["0.05"]
                    real.setdefault(name, []).append((seed, exact, sk.gamma_hat["0.05"],
                                                      own_default))
                    print(f"  [{name} d={store.d} seed {seed}] T={T} window={summ.window} "
                          f"n_params={summ.n_params} exact gamma_hat(0.05)={exact:.4g} "
                          f"gamma_hat(0)={summ.gamma_hat['0.0']:.4g}; sketch run "
                          f"gamma_hat(0.05)={sk.gamma_hat['0.05']:.4g} (sketch_error "
                          f"a_median_rel={sk.sketch_error['a_median_rel']:.3g}, n="
                          f"{sk.sketch_error['n']}); store run {t_store:.1f}s, sketch run "
                          f"{t_sketch:.1f}s", flush=True)
                except Exception:
                    print(f"  [{name} seed {seed}] CRASHED: {crash('accuracy ' + name)}")
    rows = []
    for (name, k, e), v in sorted(errs.items(), key=lambda kv: (nets.index(kv[0][0]),
                                                                  kv[0][1], kv[0][2])):
        arr = np.asarray(v)
        rows.append([name, dims.get(name, "?"), k, e, f"{100 * np.nanmedian(arr):.1f}%",
                     f"{100 * np.nanmax(arr):.1f}%", f"{int(np.sum(arr <= 0.10))} of {len(arr)}"])
    print()
    table(["net", "d", "k", "eps", "median_rel_err", "max_rel_err", "within_10%"], rows)
    print()
    # the gamma-level self-check: how often a check sample of n window steps reports
    # > 10% when the full window's error is above 10% (power) and below 5% (false alarm)
    rows = []
    for (name, k), cases in power.items():
        for n in CHECK_SIZES:
            bad = [p[n] for full, p in cases if n in p and full > 0.10]
            good = [p[n] for full, p in cases if n in p and full < 0.05]
            rows.append([name, k, n, f"{len(bad)}", f"{100 * np.mean(bad):.0f}%" if bad else "-",
                         f"{len(good)}", f"{100 * np.mean(good):.0f}%" if good else "-"])
    table(["net", "k", "check_n", "cases_>10%", "flagged", "cases_<5%", "false_alarm"], rows)
    print()
    rows = []
    for name, cases in real.items():
        for seed, exact, got, own in cases:
            rows.append([name, seed, f"{exact:.4g}", f"{got:.4g}",
                         f"{100 * _rel(got, exact):.1f}%", f"{own:.4g}"])
            SUMMARY.append(f"accuracy   {name:<12} seed {seed} sketch run (k={DEFAULT_DIM}) "
                           f"gamma_hat(0.05) rel err {100 * _rel(got, exact):.1f}%")
    table(["net", "seed", "exact_gamma_hat(0.05)", "sketch_run_gamma_hat(0.05)", "rel_err",
           "offline_same_hash"], rows)
    print("  offline_same_hash: the offline estimate with the sketch run's own hash seed (equal "
          "to the run's up to the\n  float64 rounding of s_t, which the run sums in torch)")
    for (name, k, e), v in sorted(errs.items()):
        if e == 0.05 and k == DEFAULT_DIM:
            SUMMARY.append(f"accuracy   {name:<12} k={k:<6} gamma_hat(0.05) max rel err "
                           f"{100 * np.nanmax(v):.1f}% over {len(v)}")


# ----------------------------------------------------------------------------- main

def bench_cold(args: argparse.Namespace) -> None:
    """Why the hooks cost more in training than on their own: ``Recorder._pre_step`` of
    each mode timed (wall, median over 150 steps) when called step after step with
    nothing between, after a forward pass, and after a forward and backward pass, as in
    training. The same calls on the same data; only what ran before them differs."""
    import torch

    from trajreg.record.modes import get_mode
    from trajreg.record.recorder import Recorder
    from trajreg.train.data import load_data
    from trajreg.train.loop import batches, build, minibatch_loss, total_steps

    section("6. The hooks on their own and between training steps (the CNN, wall us a call, "
            "median of 150 steps)")
    base = config(CNN, {"mode": "off"}, args.epochs)
    data = load_data(base.data)
    steps = [(s, idx) for s, _, idx in batches(base, data)][:150]
    rows = []
    for v in ("sample", "sketch", "sketch/no-grad"):
        cfg = config(CNN, VARIANTS[v], args.epochs)
        model, opt, _ = build(cfg, data)
        medians = {}
        with tempfile.TemporaryDirectory(prefix="bench-onepass-") as tmp:
            mode = get_mode(cfg.record.mode).from_config(cfg.record, cfg.seed)
            rec = Recorder(opt, Path(tmp) / "trajectory", mode=mode,
                           capacity=3 * total_steps(cfg, data) + 1)
            for h in rec._handles:  # called by hand below, timed alone
                h.remove()
            for before in ("nothing", "forward", "forward+backward"):
                spent = []
                for s, idx in steps:
                    if before == "forward":
                        with torch.no_grad():
                            minibatch_loss(cfg, model, data, idx, s)
                    elif before == "forward+backward":
                        loss = minibatch_loss(cfg, model, data, idx, s)
                        opt.zero_grad()
                        loss.backward()
                    t0 = time.perf_counter_ns()
                    rec._pre_step(opt, (), {})
                    spent.append((time.perf_counter_ns() - t0) / 1e3)
                    rec._post_step(opt, (), {})
                medians[before] = med(spent)
            rec.close()
        rows.append([v, *(f"{medians[b]:.0f}" for b in medians),
                     f"{medians['forward+backward'] / medians['nothing']:.1f}x"])
        SUMMARY.append(f"cold hooks cnn {v:<14} {medians['nothing']:.0f} us alone, "
                       f"{medians['forward+backward']:.0f} us after forward+backward")
    print()
    table(["mode", "alone_us", "after_forward_us", "after_fwd_bwd_us", "ratio"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", choices=("run", "train", "floor", "rss", "accuracy", "cold"),
                   action="append")
    p.add_argument("--nets", choices=tuple(ACC_NETS), action="append",
                   help="accuracy: these nets (default: " + ", ".join(DEFAULT_NETS) + ")")
    p.add_argument("--dims", type=int, action="append",
                   help="accuracy: these sketch sizes k (default: "
                        + ", ".join(map(str, ACC_DIMS)) + ")")
    p.add_argument("--seeds", type=int, action="append", help="accuracy: these run seeds")
    p.add_argument("--hash-seeds", type=int, default=len(ACC_HASH_SEEDS),
                   help="accuracy: how many hash seeds besides the run's own")
    p.add_argument("--no-sketch-run", action="store_true",
                   help="accuracy: skip the sketch-mode run at the default k")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.epochs = 5 if args.quick else 30
    t0 = time.perf_counter()
    print(f"trajreg one-pass benchmark: python {platform.python_version()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, cpus {os.cpu_count()}, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    parts = args.only or ["run", "train", "floor", "rss", "accuracy", "cold"]
    for part, fn in (("run", bench_run), ("train", bench_train), ("floor", bench_floor),
                     ("rss", bench_rss), ("accuracy", bench_accuracy), ("cold", bench_cold)):
        if part in parts:
            fn(args)
    section("Summary")
    for line in SUMMARY:
        print("  " + line)
    print(f"  total wall time {time.perf_counter() - t0:.0f}s")
    for what, tb in CRASHES.items():
        print(f"--- CRASH {what}\n{tb}")
    return 1 if CRASHES else 0


if __name__ == "__main__":
    sys.exit(main())
