"""What recording costs in a distributed run: the recorder's overhead per step under DDP.

Run by hand from the repository root::

    python benchmarks/bench_distributed.py [--repeats N] [--epochs E] [--nproc N]
                                           [--strategy ddp|fsdp] [--threads N]

Launches N ranks (default 2, gloo, CPU) with ``torch.distributed.run --standalone``;
each rank builds the demo MLP (configs/digits_mlp.yaml: digits, depth 6, width 64,
batch norm, global batch 64) with ``trajreg.distributed.train.build_distributed`` and
trains it E epochs with ``train_distributed(eval_full=False)`` (training alone: no F_k),
alternately without a recorder (``off``) and with the run's recorder attached
(``store``: under DDP rank 0 records the whole x_t, under FSDP2 every rank its shard),
a freshly built model each time, repeats interleaved. A timing starts after a barrier
and ends after one, so it is the slowest rank's. Reported: medians, the ratio
store/off and the overhead per step. The machine may be shared: expect +-10%.

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

ROOT = Path(__file__).resolve().parents[1]
MLP = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "depth": 6, "width": 64, "activation": "relu", "norm": "batch"},
    "optim": {"name": "sgd", "lr": 0.05},
    "record": {"mode": "store"},
}


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from trajreg.distributed.process import clean_shutdown
    from trajreg.distributed.train import build_distributed, train_distributed
    from trajreg.record.modes.store import StoreMode
    from trajreg.record.recorder import Recorder
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
    steps = total_steps(cfg, data)
    times: dict[str, list[float]] = {"off": [], "store": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats + 1):  # repeat 0 warms up, not counted
            for variant in ("off", "store"):
                model, opt, sched = build_distributed(cfg, data, args.strategy, world)
                rec = None
                if variant == "store" and (args.strategy == "fsdp" or rank == 0):
                    rec = Recorder(opt, Path(tmp) / f"{variant}-{repeat}-{rank}",
                                   mode=StoreMode(), capacity=steps + 1)
                dist.barrier()
                t0 = time.perf_counter()
                train_distributed(cfg, data, model, opt, sched, rank=rank, world=world,
                                  eval_full=False)
                if rec is not None:
                    rec.close()
                dist.barrier()
                if repeat:
                    times[variant].append(time.perf_counter() - t0)
    clean_shutdown()
    if rank == 0:
        Path(args.result).write_text(json.dumps({"steps": steps, "times": times,
                                                 "d": sum(p.numel() for p in
                                                          model.parameters())}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
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
               str(result), "--repeats", str(args.repeats), "--epochs", str(args.epochs),
               "--strategy", args.strategy, "--threads", str(args.threads)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))), OMP_NUM_THREADS=str(
            args.threads))
        status = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        if status != 0:
            print(f"bench_distributed: the launch failed (exit status {status})",
                  file=sys.stderr)
            return 1
        out = json.loads(result.read_text())
    steps, times = out["steps"], out["times"]
    off, store = statistics.median(times["off"]), statistics.median(times["store"])
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.nproc} ranks ({args.strategy}, gloo), {args.threads} thread(s) a rank")
    print(f"demo MLP, d = {out['d']}, {args.epochs} epochs = {steps} steps, "
          f"{args.repeats} interleaved repeats (medians)")
    print(f"  off   : {off:8.3f} s   {off / steps * 1e6:8.1f} us/step")
    print(f"  store : {store:8.3f} s   {store / steps * 1e6:8.1f} us/step")
    print(f"  recorder overhead: {store / off:.3f}x, "
          f"{(store - off) / steps * 1e6:+.1f} us/step")
    print("  all off  :", " ".join(f"{t:.3f}" for t in times["off"]))
    print("  all store:", " ".join(f"{t:.3f}" for t in times["store"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
