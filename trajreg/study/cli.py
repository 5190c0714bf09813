"""The ``trajreg study`` and ``trajreg report`` commands, for ``trajreg.cli`` to delegate to.

``add_study_parsers(subparsers)`` adds both subcommands; ``run_study_command(args)`` and
``run_report_command(args)`` run them and return the exit status: 0, or 3 when runs
of the study failed (the message says how many). Bad input raises ``UserError``
(``ConfigError`` included) before anything is written; ``main`` (and ``trajreg.cli``)
print it as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trajreg.errors import UserError

EXIT_FAILED_RUNS = 3


def out_path(default: str) -> Callable[[str], str]:
    """An argparse type for ``--out``: any path but an empty (or blank) one, which would
    otherwise mean the current directory's default (``default``, for the message)."""
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"must be a directory path, got {text!r} "
                                             f"(leave --out out for {default})")
        return text
    return check


def add_study_parsers(subparsers: Any) -> None:
    """Add ``study`` and ``report`` to an ``argparse`` subparsers object."""
    st = subparsers.add_parser("study", help="run a study (grid x seeds) and write its report")
    st.add_argument("study", help="study file (YAML), or a built-in study: 'paper' (the "
                                  "paper's techniques) or 'transformer' (today's "
                                  "transformer techniques)")
    st.add_argument("--preset", choices=["quick", "standard"],
                    help="size of a built-in study (default quick; only with 'paper' or "
                         "'transformer')")
    st.add_argument("--out", type=out_path("studies/<study file name>"),
                    help="study directory (default: studies/<study file name>); "
                                  "running again with the same directory resumes")
    st.add_argument("--jobs", type=int,
                    help="runs side by side (process executor; default: one per core)")
    st.add_argument("--executor", default="process",
                    help="serial, process (default) or dask://HOST:PORT")
    st.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    st.add_argument("--force", action="store_true",
                    help="write into --out even if it holds something other than this "
                         "study (nothing there is deleted)")
    st.add_argument("--data-root", help="directory of the local data sets the study reads "
                                        "(mnist, fashion_mnist, cifar10): sets data.root")
    rp = subparsers.add_parser("report", help="write the report of a study directory again")
    rp.add_argument("study_dir")
    rp.add_argument("--findings", metavar="FILE",
                    help="also write the study's findings as a Markdown page (docs/findings.md)")


def run_study_command(args: argparse.Namespace) -> int:
    """``trajreg study``: run the study, print what happened; 3 if runs failed."""
    # here, not at the top: the config's registries import torch, and building the
    # parser (``trajreg --help``) should not
    from trajreg.study.spec import BUILT_IN, load_study, preset_path, with_data_root
    from trajreg.train.config import read_yaml

    if args.study in BUILT_IN:
        source = preset_path(args.preset or "quick", args.study)
    elif args.preset:
        raise UserError(f"--preset: only the built-in studies ({', '.join(BUILT_IN)}) have "
                        "presets")
    else:
        source = Path(args.study)
    raw = read_yaml(source, "study")
    if args.data_root:
        raw = with_data_root(raw, args.data_root)
    study = load_study(raw, root=Path(source).parent)  # series' relative paths
    out = Path(args.out) if args.out else Path("studies") / Path(source).stem
    from trajreg.study.execute import run_study  # torch and the report's libraries

    result = run_study(study, out, executor=args.executor, jobs=args.jobs,
                       retry_failed=args.retry_failed, force=args.force,
                       progress=False if getattr(args, "quiet", False) else None)
    print(f"{len(result.done)} of {result.total} runs finished, {len(result.failed)} failed "
          f"({len(result.ran)} run now)"
          + (f"; {len(result.diverged)} of the finished runs diverged" if result.diverged
             else ""))
    for rid, where in result.moved_damaged.items():
        print(f"  damaged {rid}: moved to {where} and run again")
    for rid, reason in result.failed.items():
        print(f"  failed {rid}: {reason}")
    print(f"study directory: {out}")
    if result.report:
        print(f"report: {result.report['report']}")
    if result.failed:
        print(f"trajreg: {len(result.failed)} of {result.total} runs failed (reasons in "
              f"{out / 'runs'}/<run_id>.failed.json; --retry-failed runs them again)",
              file=sys.stderr)
        return EXIT_FAILED_RUNS
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    """``trajreg report``: write the report of a study directory again."""
    from trajreg.study.report import write_report
    from trajreg.study.spec import load_study_dir

    study_dir = Path(args.study_dir)
    study = load_study_dir(study_dir)
    paths = write_report(study_dir, study)
    print(f"report: {paths['report']}")
    if args.findings:
        from trajreg.study.findings import write_findings

        print(f"findings: {write_findings(study_dir, study, args.findings)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The two commands on their own (``python -m trajreg.study.cli study ...``)."""
    parser = argparse.ArgumentParser(prog="trajreg")
    add_study_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            return run_study_command(args)
        return run_report_command(args)
    except UserError as exc:
        print(f"trajreg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
