"""What recording a trajectory costs: run time, training overhead and peak memory.

Run by hand from the repository root::

    python benchmarks/bench_recording.py [--repeats N] [--quick] [--threads N]

Three measurements, every one a ratio of timings taken in the same process run
(the machine may be shared and noisy: timings are interleaved across modes and
reported as medians; the targets are printed as PASS/FAIL for information only):

1. whole run, ``trajreg.run.runner.run(cfg, out)`` into a fresh temp dir (train +
   measure + analysis + files), record mode ``store`` and ``replay`` against ``off``,
   on the demo MLP (configs/digits_mlp.yaml) and a small CNN, at the demo's 30 epochs;
   each also without the PNG figures (``run(figures=False)``, "/nofig"), a fixed
   ~0.3 s a run that short runs cannot amortise.
   Targets: store <= 1.5x off, replay <= 2.5x off.
2. training alone, ``train(..., eval_full=False)`` with a store-mode ``Recorder``
   attached against none, same seed and a freshly built model each time.
   Target: <= 1.05x.
3. peak RSS (``ru_maxrss`` of a fresh child process) of a replay-mode run at E and
   4E epochs, and of a store-mode run for contrast. Target: replay 4E/E <= 1.10.

The script exits 0 unless something crashed (a run raised, or a child failed);
missed targets never change the exit status.
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
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from nets import SMALL_CNN, demo_mlp  # benchmarks/nets.py, beside this script
from report import med, section, table  # benchmarks/report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
CNN_RAW = SMALL_CNN
MODES = ("off", "store", "replay")
# whole-run variants: a record mode, optionally without the PNG figures (run(figures=False))
VARIANTS = ("off", "store", "replay", "store/nofig", "replay/nofig")
RUN_TARGETS = {"store": 1.5, "replay": 2.5}
TRAIN_TARGET = 1.05
RSS_TARGET = 1.10

# (section, what) -> first traceback seen; any entry makes the exit status 1.
CRASHES: dict[tuple[str, str], str] = {}
VERDICTS: list[str] = []


# ----------------------------------------------------------------------------- helpers

def raw_config(model: str) -> dict:
    if model == "mlp":
        return demo_mlp()
    if model == "cnn":
        return copy.deepcopy(CNN_RAW)
    raise ValueError(f"unknown model {model!r}")


def make_config(model: str, mode: str, epochs: int):
    from trajreg.train.config import load_config

    raw = copy.deepcopy(raw_config(model))
    raw.setdefault("train", {})["epochs"] = int(epochs)
    raw["record"] = {"mode": mode}
    return load_config(raw)


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def note_crash(section: str, what: str) -> str:
    """Remember the current exception under (section, what); return a one-line summary."""
    exc = sys.exc_info()[1]
    CRASHES.setdefault((section, what), traceback.format_exc())
    return f"{type(exc).__name__}: {exc}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def fmt_s(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def fmt_x(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2f}x"


# ----------------------------------------------------------------------------- facts

def warn_if_loaded() -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0]
    if cpus and load > cpus - 0.5:
        print(f"  WARNING        : 1-min load {load:.2f} on {cpus} cpus before starting: the"
              " machine is busy (or just was);\n                   timings may be contended;"
              " torch's intra-op threads suffer most, --threads 1 is steadier")

def print_facts(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    import trajreg

    cmd = shlex.join([sys.executable, *sys.argv])
    print("trajreg recording benchmark")
    print(f"  command        : {cmd}")
    print(f"  cwd            : {os.getcwd()}")
    print(f"  date (UTC)     : {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}")
    print(f"  python         : {platform.python_version()} ({platform.machine()})")
    print(f"  platform       : {platform.platform()}")
    print(f"  torch          : {torch.__version__}")
    print(f"  numpy          : {np.__version__}")
    print(f"  trajreg        : {trajreg.__version__}")
    print(f"  os.cpu_count() : {os.cpu_count()}")
    if hasattr(os, "sched_getaffinity"):
        print(f"  usable cpus    : {len(os.sched_getaffinity(0))}")
    how = "set by --threads" if args.threads is not None else "torch default, not changed"
    print(f"  torch threads  : {torch.get_num_threads()} ({how})")
    print(f"  load average   : {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    warn_if_loaded()
    print(f"  settings       : repeats={args.repeats} run_epochs={args.run_epochs} "
          f"train_seconds>={args.train_seconds} rss_epochs={args.rss_epochs}/"
          f"{4 * args.rss_epochs} quick={args.quick}")


# ----------------------------------------------------------------------------- timing

class Timings:
    """Wall and CPU seconds of repeated timings of one variant."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)


def ratio_cells(t: Timings, base: Timings) -> tuple[float, list[str]]:
    """ratio of medians (the verdict), paired median ratio, ratio of mins, CPU ratio."""
    ratio = med(t.wall) / med(base.wall)
    paired = med([a / b for a, b in zip(t.wall, base.wall, strict=True)])
    mins = min(t.wall) / min(base.wall)
    cpu = med(t.cpu) / med(base.cpu)
    return ratio, [f"{ratio:.3f}x", f"{paired:.3f}x", f"{mins:.3f}x", f"{cpu:.3f}x"]


RATIO_HEADER = ["ratio_of_medians", "paired_median", "ratio_of_mins", "cpu_ratio"]
RATIO_NOTE = ("  ratio_of_medians = median(x) / median(base): the verdict. paired_median = median"
              " over repeats of x/base within the\n  same repeat; ratio_of_mins = min(x) /"
              " min(base), the least disturbed timings; cpu_ratio = the same as\n  ratio_of"
              "_medians on process CPU seconds (all threads), less sensitive to waiting for a"
              " busy CPU.")


# ----------------------------------------------------------------------------- part 1

def stopwatch() -> Callable[[], tuple[float, float]]:
    """Start timing after a garbage collection; the returned function gives the wall
    and CPU seconds since."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    return lambda: (time.perf_counter() - t0, time.process_time() - c0)


def time_run(cfg, label: str, figures: bool = True) -> tuple[float, float, str | None]:
    """Wall and CPU seconds of run(cfg, fresh dir); on an exception, those until it."""
    from trajreg.run.runner import run

    with tempfile.TemporaryDirectory(prefix="bench-run-") as parent:
        err = None
        elapsed = stopwatch()
        try:
            run(cfg, Path(parent) / "run", figures=figures)
        except Exception:
            err = note_crash("whole run", label)
        return (*elapsed(), err)


def bench_whole_run(args: argparse.Namespace) -> None:
    section(f"1. Whole run: run(cfg, out) wall time (train + measure + analysis + files), "
            f"record mode vs off\n   ({args.run_epochs} epochs, {args.repeats} repeats "
            f"interleaved over the variants, after one untimed warm-up run of each mode)")
    results = []
    for model in ("mlp", "cnn"):
        try:
            cfgs = {m: make_config(model, m.split("/")[0], args.run_epochs) for m in VARIANTS}
        except Exception:
            print(f"  [{model}] CRASHED building the config: {note_crash('whole run', model)}")
            VERDICTS.append(f"whole run   {model:<4} CRASH")
            continue
        times = {m: Timings() for m in VARIANTS}
        errors: dict[str, str] = {}
        for mode in VARIANTS:  # warm-up: imports, matplotlib, allocator, caches
            *_, err = time_run(cfgs[mode], f"{model}/{mode}", "nofig" not in mode)
            if err:
                errors.setdefault(mode, err)
        for r in range(args.repeats):
            for mode in VARIANTS:
                wall, cpu, err = time_run(cfgs[mode], f"{model}/{mode}", "nofig" not in mode)
                times[mode].add(wall, cpu)
                if err:
                    errors.setdefault(mode, err)
            print(f"  [{model}] repeat {r + 1}/{args.repeats}: "
                  + "  ".join(f"{m}={times[m].wall[-1]:.3f}s" for m in VARIANTS), flush=True)
        results.append((model, times, errors))

    print()
    rows = []
    for model, times, errors in results:
        for mode in VARIANTS:
            t = times[mode]
            cells = [model, mode + (" *CRASHED*" if mode in errors else ""),
                     fmt_s(med(t.wall)), fmt_s(min(t.wall)), fmt_s(max(t.wall)),
                     fmt_s(med(t.cpu))]
            if mode == "off":
                rows.append(cells + ["1 (base)", "", "", "", "", ""])
                continue
            ratio, rcells = ratio_cells(t, times["off"])
            goal = RUN_TARGETS[mode.split("/")[0]]
            target = f"<= {goal:.2f}x"
            check = verdict(ratio <= goal)
            if errors:
                check += " (see crash note)"
            rows.append(cells + rcells + [target, check])
            VERDICTS.append(f"whole run   {model:<4} {mode:<12} {ratio:6.3f}x "
                            f"(target {target}) {check}")
    table(["model", "mode", "median_s", "min_s", "max_s", "cpu_median_s", *RATIO_HEADER,
           "target", "verdict"], rows)
    print(RATIO_NOTE + " base = off.")
    for model, _, errors in results:
        for mode, err in errors.items():
            print(f"  NOTE: {model}/{mode} raised inside run(): {err}")
            print("        its times are the time until the exception (a lower bound of the "
                  "full run); ratios against a crashed 'off' are upper bounds.")


# ----------------------------------------------------------------------------- part 2

def time_train(cfg, data, recorded: bool) -> tuple[float, float, list[float]]:
    """Wall and CPU seconds of train(eval_full=False) on a freshly built model, with or
    without a store-mode Recorder attached (its close(), which writes x_T and syncs the
    file, is timed too; creating it, which preallocates the file, is not)."""
    from trajreg.record.recorder import Recorder
    from trajreg.train.loop import build, total_steps, train

    model, opt, sched = build(cfg, data)
    with tempfile.TemporaryDirectory(prefix="bench-rec-") as tmp:
        rec = None
        if recorded:
            rec = Recorder(opt, Path(tmp) / "trajectory", mode="store",
                           capacity=total_steps(cfg, data) + 1)
        elapsed = stopwatch()
        log = train(cfg, data, model, opt, sched, eval_full=False)
        if rec is not None:
            rec.close()
        return (*elapsed(), log.loss)


def bench_train_overhead(args: argparse.Namespace) -> None:
    from trajreg.train.data import load_data
    from trajreg.train.loop import steps_per_epoch

    section(f"2. Training alone: train(eval_full=False) with a store-mode Recorder vs none\n"
            f"   ({args.repeats} repeats interleaved none/recorder, fresh model from build() "
            f"each time, each timing >= ~{args.train_seconds:g}s)")
    rows = []
    for model in ("mlp", "cnn"):
        try:
            calib = make_config(model, "off", 3)
            data = load_data(calib.data)
            spe = steps_per_epoch(calib, data)
            time_train(calib, data, True)  # warm-up, both ways
            per_epoch = min(time_train(calib, data, False)[0] for _ in range(3)) / 3
            epochs = min(400, max(args.run_epochs,
                                  math.ceil(args.train_seconds / per_epoch)))
            cfg = make_config(model, "off", epochs)
            print(f"  [{model}] calibration (fastest of 3): {per_epoch / spe * 1e3:.2f} ms/step"
                  f", {spe} steps/epoch -> {epochs} epochs = {epochs * spe} steps per timing",
                  flush=True)
            plain, recd = Timings(), Timings()
            same = True
            for r in range(args.repeats):
                a, ca, la = time_train(cfg, data, False)
                b, cb, lb = time_train(cfg, data, True)
                plain.add(a, ca)
                recd.add(b, cb)
                same = same and la == lb
                print(f"  [{model}] repeat {r + 1}/{args.repeats}: none={a:.3f}s "
                      f"recorder={b:.3f}s ({b / a:.3f}x)", flush=True)
        except Exception:
            err = note_crash("train overhead", model)
            print(f"  [{model}] CRASHED: {err}")
            rows.append([model] + ["n/a"] * 9 + [f"<= {TRAIN_TARGET:.2f}x", "CRASH", ""])
            VERDICTS.append(f"train only  {model:<4} CRASH")
            continue
        ratio, rcells = ratio_cells(recd, plain)
        ok = ratio <= TRAIN_TARGET
        steps = epochs * spe
        added = (med(recd.wall) - med(plain.wall)) / steps * 1e6
        rows.append([model, steps, fmt_s(med(plain.wall)), fmt_s(med(recd.wall)),
                     f"{med(plain.wall) / steps * 1e6:.0f}", f"{added:+.0f}", *rcells,
                     f"<= {TRAIN_TARGET:.2f}x", verdict(ok), "yes" if same else "NO"])
        VERDICTS.append(f"train only  {model:<4} store  {ratio:6.3f}x "
                        f"(target <= {TRAIN_TARGET:.2f}x) {verdict(ok)}")
    print()
    table(["model", "steps", "none_median_s", "recorder_median_s", "us/step",
           "us/step_added", *RATIO_HEADER, "target", "verdict", "same_losses"], rows)
    print(RATIO_NOTE + " base = no recorder.")
    print("  same_losses: the recorded and unrecorded runs produced bit-identical step losses.")


# ----------------------------------------------------------------------------- part 3

def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM); -1 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Peak anonymous and file-backed RSS of this process, sampled every few ms from
    /proc/self/status in a thread (ru_maxrss has no such split; a sample can miss a peak
    shorter than the interval)."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.interval = interval
        self.peak = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            key = line.split(":", 1)[0]
            if key in self.peak:
                self.peak[key] = max(self.peak[key], int(line.split()[1]))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def child_main(spec: dict) -> None:
    """One run in this (fresh) process; print RESULT {json} with its peak RSS (KiB)."""
    start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    set_threads(spec.get("threads"))
    from trajreg.run.runner import run
    from trajreg.train.data import load_data
    from trajreg.train.loop import total_steps

    cfg = make_config(spec["model"], spec["mode"], spec["epochs"])
    data = load_data(cfg.data)  # what run() loads first, so its imports are not run cost
    import matplotlib.figure  # noqa: F401  (figures are drawn by record modes only)

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_before = _status_kib("VmRSS")
    reset = _reset_peak()  # from here on ru_maxrss is the peak since run() began
    parent = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    try:
        with RssSampler() as sampler:
            t0 = time.perf_counter()
            run(cfg, parent / "run")
            wall = time.perf_counter() - t0
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        traj = parent / "run" / "trajectory"
        files = list(traj.iterdir()) if traj.is_dir() else []
        traj_bytes = sum(f.stat().st_size for f in files)
        traj_alloc = sum(f.stat().st_blocks * 512 for f in files)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print("RESULT " + json.dumps({
        "start_kib": start_kib, "peak_before_kib": peak_before, "rss_before_kib": rss_before,
        "reset": reset, "peak_run_kib": peak_after if reset else -1,
        "peak_kib": max(peak_before, peak_after), "wall_s": wall,
        "steps": total_steps(cfg, data), "traj_bytes": traj_bytes, "traj_alloc": traj_alloc,
        "anon_kib": sampler.peak["RssAnon"], "file_kib": sampler.peak["RssFile"],
        "shmem_kib": sampler.peak["RssShmem"],
    }), flush=True)


def run_child(spec: dict) -> dict | None:
    # A child exec'd straight from this process starts with ru_maxrss = this process's
    # peak RSS (Linux carries the exec'ing mm's high-water mark over in signal->maxrss).
    # So the child is forked by a small /bin/sh that does not exec it ("; exit $?").
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh",
           sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    label = f"{spec['model']}/{spec['mode']}/{spec['epochs']} epochs"
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        CRASHES.setdefault(("peak rss", label), f"child exited {proc.returncode}:\n{tail}")
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  [{label}] CHILD FAILED (exit {proc.returncode}): {last}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def bench_peak_rss(args: argparse.Namespace) -> None:
    E = args.rss_epochs
    model = "mlp"
    section(f"3. Peak memory: run(cfg, out) of the demo MLP in a fresh child process, "
            f"E={E} vs 4E={4 * E} epochs (ru_maxrss, KiB on Linux)")
    mib = 1024.0
    rows = []
    results: dict[tuple[str, int], dict | None] = {}
    for mode in ("replay", "store"):
        for epochs in (E, 4 * E):
            spec = {"model": model, "mode": mode, "epochs": epochs, "threads": args.threads}
            res = run_child(spec)
            results[(mode, epochs)] = res
            if res is None:
                rows.append([mode, epochs] + ["n/a"] * 10)
                continue
            in_run = res["peak_run_kib"]
            rows.append([
                mode, epochs, res["steps"], f"{res['start_kib'] / mib:.1f}",
                f"{res['peak_before_kib'] / mib:.1f}", f"{res['rss_before_kib'] / mib:.1f}",
                f"{in_run / mib:.1f}" if in_run >= 0 else "n/a",
                f"{res['peak_kib'] / mib:.1f}",
                f"{res['anon_kib'] / mib:.1f} / {res['file_kib'] / mib:.1f}",
                f"{res['wall_s']:.2f}",
                f"{res['traj_bytes'] / 2**20:.1f} ({res['traj_alloc'] / 2**20:.1f})"
                if res["traj_bytes"] else "-"])
            print(f"  [{model}/{mode}/{epochs} epochs] process peak {res['peak_kib'] / mib:.1f}"
                  f" MiB, run {res['wall_s']:.2f}s", flush=True)
    print()
    table(["mode", "epochs", "steps", "at_start", "peak_before_run", "rss_before_run",
           "peak_in_run", "process_peak", "sampled_peak_anon/file", "run_wall_s",
           "trajectory_on_disk (allocated)"],
          rows)
    print("  MiB. at_start: ru_maxrss as the child starts (must be small: the child is not"
          " exec'd from this big process);")
    print("  peak_before_run: ru_maxrss after imports and load_data; rss_before_run: VmRSS"
          " then; peak_in_run: ru_maxrss at the end,")
    print("  after resetting the high-water mark just before run() (clear_refs 5);"
          " process_peak: ru_maxrss of the whole child;")
    print("  sampled_peak_anon/file: peak RssAnon (heap, tensors) and RssFile (mapped files:"
          " libraries, the trajectory memmaps)\n  during run(), sampled every 5 ms."
          " trajectory_on_disk: apparent size (allocated blocks) in MiB.")
    print()
    for mode in ("replay", "store"):
        a, b = results[(mode, E)], results[(mode, 4 * E)]
        if a is None or b is None:
            VERDICTS.append(f"peak rss    {model:<4} {mode:<6} CRASH")
            print(f"  {mode:<6}: n/a (a child failed)")
            continue
        ratio = b["peak_kib"] / a["peak_kib"]
        ok = ratio <= RSS_TARGET
        kind = "target" if mode == "replay" else "contrast, same bar"
        print(f"  {mode:<6}: process peak RSS {4 * E}/{E} epochs = {b['peak_kib'] / mib:.1f} / "
              f"{a['peak_kib'] / mib:.1f} MiB = {ratio:.3f}x ({kind} <= {RSS_TARGET:.2f}x: "
              f"{verdict(ok)})")
        if a["peak_run_kib"] > 0 and b["peak_run_kib"] > 0:
            added_a = a["peak_run_kib"] - a["rss_before_kib"]
            added_b = b["peak_run_kib"] - b["rss_before_kib"]
            print(f"          peak within run() {b['peak_run_kib'] / a['peak_run_kib']:.3f}x; "
                  f"run() added {added_b / mib:+.1f} MiB at {4 * E} epochs vs "
                  f"{added_a / mib:+.1f} MiB at {E} (over RSS before run)")
        print(f"          sampled peak anon {a['anon_kib'] / mib:.1f} -> "
              f"{b['anon_kib'] / mib:.1f} MiB, file-backed {a['file_kib'] / mib:.1f} -> "
              f"{b['file_kib'] / mib:.1f} MiB")
        if a["traj_bytes"]:
            print(f"          trajectory on disk grows {a['traj_bytes'] / 2**20:.1f} -> "
                  f"{b['traj_bytes'] / 2**20:.1f} MiB")
        VERDICTS.append(f"peak rss    {model:<4} {mode:<6} {ratio:6.3f}x "
                        f"({kind} <= {RSS_TARGET:.2f}x) {verdict(ok)}")


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per measurement (default 5; 3 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and epochs (about 2 minutes)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) here and in the children "
                        "(default: leave torch's default)")
    p.add_argument("--only", choices=("run", "train", "rss"), action="append",
                   help="run only these parts (repeatable; default all)")
    p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    args.run_epochs = 5 if args.quick else 30  # 30: the demo's run length
    args.train_seconds = 0.75 if args.quick else 2.0
    args.rss_epochs = 5 if args.quick else 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return 0
    set_threads(args.threads)
    t_start = time.perf_counter()
    print_facts(args)
    parts = args.only or ["run", "train", "rss"]
    if "run" in parts:
        bench_whole_run(args)
    if "train" in parts:
        bench_train_overhead(args)
    if "rss" in parts:
        bench_peak_rss(args)

    section("Summary (ratios measured in this run; targets are informational)")
    for line in VERDICTS:
        print("  " + line)
    print(f"  load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
          " (includes this benchmark's own load)")
    print(f"  total benchmark wall time: {time.perf_counter() - t_start:.1f}s")
    if CRASHES:
        print()
        print(f"CRASHES ({len(CRASHES)}): something raised; the exit status is 1.")
        for (part, what), tb in CRASHES.items():
            print(f"--- {part}: {what}")
            print(tb.rstrip())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
