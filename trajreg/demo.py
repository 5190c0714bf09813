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
    figure = compare_figure(out / "gamma_per_epoch.png", [(f"norm={n}", s) for n, s, _ in rows])
    print(f"both runs' gamma per epoch: {figure}")
    return 0


def compare_figure(path: Path, runs: list[tuple[str, Any]], eps: float = 0.05) -> Path:
    """gamma_hat per epoch of several runs on one axis, with each run's training loss
    beside it (the README's figure: ``python -m trajreg.demo``)."""
    import numpy as np
    from matplotlib.figure import Figure

    from trajreg.run.figures import save_png

    fig = Figure(figsize=(10, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.88, wspace=0.25)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    key = str(float(eps))
    for label, summary in runs:
        per_epoch = np.asarray((summary.gamma_hat_per_epoch or {}).get(key, []), dtype=float)
        epochs = np.arange(1, len(per_epoch) + 1)
        left.plot(epochs, np.where(np.isfinite(per_epoch), per_epoch, np.nan), "o-", ms=3,
                  label=f"{label}: gamma_hat {summary.gamma(eps):.3g}")
        loss = np.asarray(summary.full_loss, dtype=float)
        right.plot(np.arange(len(loss)), loss, "o-", ms=3, label=label)
    left.axhline(0.0, color="k", lw=0.5)
    left.set(xlabel="epoch", ylabel=f"gamma_hat (eps {eps:g}) in the epoch",
             title="Regularity of each epoch's updates")
    right.set(xlabel="epoch", ylabel="F (training loss)", yscale="log",
              title="Training loss")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    save_png(fig, path)
    return path


if __name__ == "__main__":
    sys.exit(main())
