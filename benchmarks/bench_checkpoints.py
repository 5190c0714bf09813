"""Memory and time of ``trajreg checkpoints`` against the series' length and the model.

A series of K torch.save checkpoints of an MLP of d parameters (random states; the
measurement does not care how they were trained) is measured in a fresh interpreter per
case, so each peak RSS is its own, exact and with ``--sketch-dim``. Per case: the peak
RSS against the model's own footprint (parameters + gradient = 2 d float32, measured as
the RSS after one forward and backward pass, the baseline of the same process), and the
time per checkpoint against one forward and backward pass over the evaluation batches
(also measured in that process). Memory O(d) means the RSS ratio stays flat in K.

    python benchmarks/bench_checkpoints.py --width 2048 --checkpoints 4,16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import section, table  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(width: int, depth: int):
    import torch

    layers: list = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def child(args: argparse.Namespace) -> dict:
    import torch

    from trajreg.checkpoints import measure_checkpoints

    torch.set_num_threads(args.threads)
    folder = Path(args.series)
    model = _model(args.width, args.depth)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, args.width, generator=gen), torch.randint(10, (64,), generator=gen))
               for _ in range(4)]

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    start = time.perf_counter()
    for batch in batches:  # one forward and backward pass: the unit of cost
        loss_fn(model, batch).backward()
    unit = time.perf_counter() - start
    base = _rss_mib()
    start = time.perf_counter()
    files = sorted(folder.glob("step-*.pt"))[: args.k]
    measure_checkpoints(files, Path(args.out) / "out", model=model, loss_fn=loss_fn,
                        batches=batches, sketch_dim=args.sketch_dim or None, figures=False,
                        interval_points=0, mli=False, progress=False)
    wall = time.perf_counter() - start
    d = sum(p.numel() for p in model.parameters())
    return {"k": args.k, "d": d, "sketch": args.sketch_dim, "base_mib": base,
            "peak_mib": _rss_mib(), "per_checkpoint_s": wall / args.k, "unit_s": unit}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--checkpoints", default="4,16")
    p.add_argument("--sketch-dims", default="0,16384", help="0: exact")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sketch-dim", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--series", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.k is not None:
        print(json.dumps(child(args)))
        return
    import torch

    counts = [int(v) for v in args.checkpoints.split(",")]
    dims = [int(v) for v in args.sketch_dims.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "series"
        series.mkdir()
        model = _model(args.width, args.depth)
        for step in range(max(counts)):
            with torch.no_grad():
                for q in model.parameters():
                    q.add_(torch.randn_like(q), alpha=0.01)
            torch.save(model.state_dict(), series / f"step-{step:06d}.pt")
        for dim in dims:
            for k in counts:
                with tempfile.TemporaryDirectory(dir=tmp) as out:
                    proc = subprocess.run(
                        [sys.executable, __file__, "--k", str(k), "--sketch-dim", str(dim),
                         "--series", str(series), "--out", out, "--width", str(args.width),
                         "--depth", str(args.depth), "--threads", str(args.threads)],
                        capture_output=True, text=True, check=True)
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    section(f"trajreg checkpoints: MLP width {args.width} depth {args.depth}, "
            f"{args.threads} thread(s)")
    table(["sketch", "K", "d", "RSS after fwd+bwd MiB", "peak RSS MiB", "peak / base",
           "s per checkpoint", "per checkpoint / fwd+bwd"],
          [[r["sketch"] or "exact", r["k"], r["d"], f"{r['base_mib']:.0f}",
            f"{r['peak_mib']:.0f}", f"{r['peak_mib'] / r['base_mib']:.2f}",
            f"{r['per_checkpoint_s']:.3f}", f"{r['per_checkpoint_s'] / r['unit_s']:.1f}"]
           for r in rows])


if __name__ == "__main__":
    main()
