"""What recording costs in a distributed run: the recorder's overhead per step under DDP.

Run by hand from the repository root::

    python benchmarks/bench_distributed.py [--epochs E] [--block B] [--nproc N]
                                           [--strategy ddp|fsdp] [--threads N]
                                           [--modes store,sample,sketch]

Launches N ranks (default 2, gloo, CPU) with ``torch.distributed.run --standalone``;
each rank builds the demo MLP (configs/digits_mlp.yaml: digits, depth 6, width 64,
batch norm, global batch 64) with ``trajreg.distributed.train.build_distributed``, once
without a recorder (``off``) and once with the run's recorder attached in each record
mode (default: store, sample and sketch, with their default options, so sample and
sketch record gradients; under DDP rank 0 records the whole x_t, under FSDP2 every rank
its shard, sketch hashed by global index), and trains each E epochs with
``train_distributed(eval_full=False)`` (training alone: no F_k), B epochs at a time,
the variants taking turns (their order rotating each round; a first round warms up and
is not counted), so a busy machine's slow spells fall on every variant alike. A turn's
timing starts after a barrier and ends after one, so it is the slowest rank's; the
recorders' ``close`` (x_T, flushing) is timed at the end and counted.

Reported per mode: the total time against off (ratio and overhead per step), the median
of the per-round ratios (steadier when the load drifts), and rank 0's time inside the
recorder's hooks and ``close`` per step: the recorder's own work, which the other
ranks wait for at the next collective; and the CPU seconds of all ranks (every thread,
the store's writer included) against off. The machine may be shared: expect +-10% on
the wall-time ratios, more under load (two identical variants measured 0.93x to 1.01x
of each other at load 3.5 to 4 over 40 epochs); the hook times and CPU are steadier.

Exit status 0 unless a rank failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nets import demo_mlp  # benchmarks/nets.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
MLP = demo_mlp()  # the record section is the demo's: store


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from trajreg.distributed.process import clean_shutdown
    from trajreg.distributed.train import build_distributed, train_distributed
    from trajreg.record.modes import get_mode
    from trajreg.record.recorder import Recorder, optimizer_params
    from trajreg.record.shards import Shard
    from trajreg.train.config import load_config
    from trajreg.train.data import load_data
    from trajreg.train.loop import total_steps

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    raw = json.loads(json.dumps(MLP))
    raw["train"] = {"epochs": args.epochs, "threads": args.threads,
                    "distributed": {"strategy": args.strategy, "nproc": world}}
    cfg = load_config(raw)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    data = load_data(cfg.data)
    variants = ["off", *args.modes.split(",")]
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}  # CPU seconds, all ranks
    closing: dict[str, float] = {}
    hooks: dict[str, float] = {}  # rank 0's time in the recorder (hooks and close)

    class TimedRecorder(Recorder):
        """The recorder, with the time spent in its hooks and close added up."""

        spent = 0.0

        def _pre_step(self, *a: Any) -> None:
            t = time.perf_counter()
            super()._pre_step(*a)
            self.spent += time.perf_counter() - t

        def _post_step(self, *a: Any) -> None:
            t = time.perf_counter()
            super()._post_step(*a)
            self.spent += time.perf_counter() - t

        def close(self) -> None:
            t = time.perf_counter()
            super().close()
            self.spent += time.perf_counter() - t

    block = load_config({**raw, "train": {**raw["train"], "epochs": args.block}})
    per_block = total_steps(block, data)
    rounds = max(1, args.epochs // args.block)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for variant in variants:  # one model a variant, trained a block at a time
            model, opt, sched = build_distributed(block, data, args.strategy, world)
            rec = None
            if variant != "off" and (args.strategy == "fsdp" or rank == 0):
                mode = get_mode(variant).from_config(cfg.record, cfg.seed)
                # fsdp: every rank its shard, as the worker records (shard_recorder)
                shard = (Shard.of(optimizer_params(opt), rank, world)
                         if args.strategy == "fsdp" else None)
                rec = TimedRecorder(opt, Path(tmp) / f"{variant}-{rank}", mode=mode,
                                    capacity=(rounds + 1) * per_block + 1, shard=shard)
            runs[variant] = (model, opt, sched, rec)
        for r in range(rounds + 1):  # round 0 warms up, not counted
            shift = r % len(variants)  # rotate the order: no variant always first
            for variant in variants[shift:] + variants[:shift]:
                model, opt, sched, rec = runs[variant]
                dist.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                train_distributed(block, data, model, opt, sched, rank=rank, world=world,
                                  eval_full=False)
                c1 = time.process_time()  # this process's CPU, every thread (the writer's)
                dist.barrier()
                t1 = time.perf_counter()
                used = torch.tensor([c1 - c0], dtype=torch.float64)
                dist.all_reduce(used)  # summed over ranks
                if r:
                    times[variant].append(t1 - t0)
                    cpu[variant].append(used.item())
                elif rec is not None:
                    rec.spent = 0.0
        for variant in variants:  # the recorder's close (x_T, flushing) counts too
            rec = runs[variant][3]
            dist.barrier()
            t0 = time.perf_counter()
            if rec is not None:
                rec.close()
            dist.barrier()
            closing[variant] = time.perf_counter() - t0
            hooks[variant] = rec.spent if rec is not None else 0.0
    clean_shutdown()
    if rank == 0:
        Path(args.result).write_text(json.dumps({
            "steps": rounds * per_block, "per_block": per_block, "times": times,
            "cpu": cpu, "closing": closing, "hooks": hooks,
            "d": sum(p.numel() for p in runs["off"][0].parameters())}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="epochs each variant trains")
    p.add_argument("--block", type=int, default=1,
                   help="epochs a variant trains before the next variant's turn")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--modes", default="store,sample,sketch",
                   help="record modes timed against off (comma-separated)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(args.nproc), __file__, "--worker", "--result",
               str(result), "--block", str(args.block), "--epochs", str(args.epochs),
               "--strategy", args.strategy, "--threads", str(args.threads),
               "--modes", args.modes]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))), OMP_NUM_THREADS=str(
            args.threads))
        status = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        if status != 0:
            print(f"bench_distributed: the launch failed (exit status {status})",
                  file=sys.stderr)
            return 1
        out = json.loads(result.read_text())
    steps, times, hooks = out["steps"], out["times"], out["hooks"]
    total = {v: sum(t) + out["closing"][v] for v, t in times.items()}
    off = total["off"]
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.nproc} ranks ({args.strategy}, gloo), {args.threads} thread(s) a rank, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print(f"demo MLP, d = {out['d']}, {args.epochs} epochs = {steps} steps a variant, in "
          f"blocks of {out['per_block']} steps interleaved")
    print(f"  {'off':7s}: {off:8.3f} s   {off / steps * 1e6:8.1f} us/step")
    for variant in times:
        if variant == "off":
            continue
        t = total[variant]
        paired = statistics.median(a / b for a, b in zip(times[variant], times["off"],
                                                         strict=True))
        used = sum(out["cpu"][variant]) / sum(out["cpu"]["off"])
        print(f"  {variant:7s}: {t:8.3f} s   {t / steps * 1e6:8.1f} us/step   "
              f"{t / off:.3f}x ({(t - off) / steps * 1e6:+7.1f} us/step), median of the "
              f"rounds' ratios {paired:.3f}x; rank 0 in the recorder "
              f"{hooks[variant] / steps * 1e6:6.1f} us/step; CPU of the ranks {used:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
