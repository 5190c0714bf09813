"""``make demo-mlp``: the 6-layer MLP on digits with and without batch norm, side by side."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from trajreg.run import run
from trajreg.train.config import load_config

BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "depth": 6, "width": 64, "activation": "relu", "norm": "batch"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0},
    # one thread: a model this small gains nothing from more, and on a busy machine
    # torch's default (one per core) made the demo several times slower
    "train": {"epochs": 30, "device": "cpu", "threads": 1},
    "record": {"mode": "store"},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo-out", help="directory for the two runs")
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = []
    for norm in ("batch", "none"):
        cfg = load_config({**BASE, "model": {**BASE["model"], "norm": norm},
                           "train": {**BASE["train"], "epochs": args.epochs}})
        run_dir = out / f"mlp-norm-{norm}"
        if run_dir.exists():  # the demo's own output from an earlier call
            shutil.rmtree(run_dir)
        print(f"training {cfg.model.name} depth {cfg.model.depth} on {cfg.data.name}, "
              f"norm={norm} ...", flush=True)
        _, summary = run(cfg, run_dir)
        rows.append((norm, summary, run_dir))
    print()
    print(f"{'norm':<8}{'gamma_hat(0)':>14}{'gamma_hat(.05)':>16}{'kappa_hat(.05)':>16}"
          f"{'gamma_bar':>11}{'final loss':>12}  window")
    for norm, s, _ in rows:
        start, end = s.window or (0, 0)
        print(f"{norm:<8}{s.gamma(0.0):>14.4g}{s.gamma(0.05):>16.4g}{s.kappa(0.05):>16.4g}"
              f"{s.gamma_bar:>11.4g}{s.final_loss:>12.4g}  [{start}, {end})")
    print()
    for norm, _, run_dir in rows:
        print(f"results (norm={norm}): {run_dir}/  (summary.json, metrics.parquet, *.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
