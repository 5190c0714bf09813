"""``trajreg`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from trajreg.errors import ConfigError, ReplayMismatch, UserError

if TYPE_CHECKING:
    from trajreg.run.summary import Summary


def _window(text: str) -> tuple[int, int]:
    try:
        start, end = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window must be START:END steps, got {text!r}") from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"window must satisfy 0 <= START < END, got {text!r}")
    return start, end


def _eps(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"eps must be numbers like 0,0.05, got {text!r}") from None
    if not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"eps values must be in [0, 1), got {text!r}")
    return values


def _nonneg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trajreg", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train, record and analyse one run")
    r.add_argument("config", help="run config (YAML)")
    r.add_argument("--out", help="run directory to create (default: runs/<config>-<time>)")
    r.add_argument("--no-figures", action="store_true",
                   help="skip the PNG figures (trajreg analyze draws them later)")
    r.add_argument("--tensorboard", action="store_true",
                   help="mirror per-step quantities and gamma per epoch to RUN_DIR/tensorboard")
    a = sub.add_parser("analyze", help="recompute the analysis of a finished run")
    a.add_argument("run_dir")
    a.add_argument("--reference", choices=["final", "best"])
    a.add_argument("--eps", type=_eps, help="comma-separated violation fractions, e.g. 0,0.05")
    a.add_argument("--delta", type=_nonneg, help="constant delta (default: eta_t / 2)")
    a.add_argument("--window", type=_window, help="START:END steps (default: converging phase)")
    st = sub.add_parser("study", help="run a study (grid x seeds) and write its report")
    st.add_argument("study", help="study file (YAML), or 'paper' for the built-in paper study")
    st.add_argument("--preset", choices=["quick", "standard"],
                    help="size of the paper study (default quick; only with 'paper')")
    st.add_argument("--out", help="study directory (default: studies/<study name>); "
                                  "running again with the same directory resumes")
    st.add_argument("--jobs", type=int, help="parallel runs (process executor; default: cores)")
    st.add_argument("--executor", default="process",
                    help="serial, process (default) or dask://HOST:PORT")
    st.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    st.add_argument("--data-root", help="directory of the local data sets the study reads "
                                        "(mnist, fashion_mnist, cifar10): sets data.root")
    rp = sub.add_parser("report", help="write the report of a study directory again")
    rp.add_argument("study_dir")
    return p


def _print_summary(summary: Summary) -> None:
    if summary.analysed:
        g, kap = summary.gamma_hat, summary.kappa_hat
        start, end = summary.window
        print(f"window [{start}, {end}) of {summary.n_steps} steps")
        for key in g:
            print(f"gamma_hat(eps={key}) = {g[key]:.6g}   kappa_hat(eps={key}) = {kap[key]:.6g}")
        print(f"gamma_bar = {summary.gamma_bar:.6g}   final loss = {summary.final_loss:.6g}")
    else:
        print(f"{summary.n_steps} steps (record mode off: no analysis)   "
              f"final loss = {summary.final_loss:.6g}")
    if summary.diverged:
        print(f"diverged at step {summary.diverged_step}")


def _study(args: argparse.Namespace) -> None:
    from trajreg.study import load_study, preset_path, run_study
    from trajreg.study.spec import with_data_root
    from trajreg.train.config import read_yaml

    if args.study == "paper":
        source = preset_path(args.preset or "quick")
    elif args.preset:
        raise UserError("--preset: only the built-in 'paper' study has presets")
    else:
        source = Path(args.study)
    raw = read_yaml(source, "study")
    if args.data_root:
        raw = with_data_root(raw, args.data_root)
    study = load_study(raw)
    out = Path(args.out) if args.out else Path("studies") / Path(source).stem
    result = run_study(study, out, executor=args.executor, jobs=args.jobs,
                       retry_failed=args.retry_failed)
    print(f"{len(result.done)} runs finished ({len(result.ran)} now), "
          f"{len(result.failed)} failed, of {len(study.runs)}")
    for rid, reason in result.failed.items():
        print(f"  failed {rid}: {reason}")
    print(f"study directory: {out}\nreport: {out / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from trajreg.run import runner

        if args.command == "run":
            from trajreg.train.config import load_config

            cfg = load_config(args.config)
            out = Path(args.out) if args.out else runner.default_out(args.config)
            out, summary = runner.run(cfg, out, figures=not args.no_figures,
                                      tensorboard=args.tensorboard)
            _print_summary(summary)
            print(f"run directory: {out}")
        elif args.command == "analyze":
            summary = runner.analyze(args.run_dir, reference=args.reference, eps=args.eps,
                                     delta=args.delta, window=args.window)
            _print_summary(summary)
            print(f"updated: {args.run_dir}")
        elif args.command == "study":
            _study(args)
        elif args.command == "report":
            from trajreg.study import load_study_dir, write_report

            study_dir = Path(args.study_dir)
            paths = write_report(study_dir, load_study_dir(study_dir))
            print(f"report: {paths['report']}")
    except (UserError, ConfigError) as exc:
        print(f"trajreg: error: {exc}", file=sys.stderr)
        return 2
    except ReplayMismatch as exc:
        print(f"trajreg: replay failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
