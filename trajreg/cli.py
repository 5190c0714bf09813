"""``trajreg`` command line: a thin shell over the Python API.

Every failure is one line on stderr and an exit status: 2 for what the user can act
on (a bad config, option or path, a damaged run directory, a full or read-only
disk), 1 for a failed replay or a bug ("internal error", with ``--debug`` for the
traceback), 3 for a study whose runs failed, 130 and 143 for SIGINT and SIGTERM
(the partial run directory is removed first; a signal after the run directory was
renamed into place keeps it, says so in one line, and still exits 130 or 143: the
command was interrupted, and a shell loop around it should stop). Warnings are
printed as one line each, ``trajreg: warning: ...``, while ``main`` runs.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from trajreg.errors import ReplayMismatch, UserError
from trajreg.study.cli import add_study_parsers, out_path

if TYPE_CHECKING:
    from trajreg.run.summary import Summary

# OSErrors that are the machine's state, not a bug: the user can act on them
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                errno.EPERM, errno.EFBIG, errno.ENOTDIR, errno.EISDIR,
                                errno.ENAMETOOLONG, errno.EIO, errno.ELOOP, errno.EMFILE})


class Interrupted(BaseException):
    """SIGINT or SIGTERM: raised in the main thread so that every ``finally`` and
    partial-directory clean-up runs (a BaseException: ``except Exception`` skips it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.status = 128 + signum


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``trajreg run: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def one_line(text: object) -> str:
    """A message on one line: line breaks (in YAML or pyarrow errors) become spaces."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def _window(text: str) -> tuple[int, int]:
    try:
        start, end = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"window must be START:END steps, got {_quoted(text)}") from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(
            f"window must satisfy 0 <= START < END, got {_quoted(text)}")
    return start, end


def _quoted(text: str) -> str:
    """An option's value for a message, at most 80 characters."""
    return repr(text) if len(text) <= 78 else repr(text[:72]) + "..."


def _eps(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"eps must be numbers like 0,0.05, got {_quoted(text)}") from None
    if not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"eps values must be in [0, 1), got {_quoted(text)}")
    return [v + 0.0 for v in values]  # -0 is 0 (the summary's key "0.0", not "-0.0")


def _delta(text: str) -> float:
    from trajreg.train.config import FLOAT32_MAX

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_quoted(text)}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {_quoted(text)}")
    if value > FLOAT32_MAX:  # as analysis.delta: delta is on the learning rate's scale
        raise argparse.ArgumentTypeError(
            f"must be at most {FLOAT32_MAX:.4g} (delta is on the scale of the learning "
            f"rate, a float32), got {_quoted(text)}")
    return value + 0.0


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number, got {_quoted(text)}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {_quoted(text)}")
        return value
    return check


_positive = _at_least(1)
_nonnegative = _at_least(0)
_nproc = _positive  # trajreg run --nproc (trajreg.distributed)


def _steps(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"steps must be whole numbers like 0,500,1000, got {_quoted(text)}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"steps must be >= 0, got {_quoted(text)}")
    return values


def _common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # on the top parser and on each command, so both `trajreg --debug run` and
    # `trajreg run ... --debug` work (SUPPRESS: a command's default never overrides)
    default = False if top else argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", default=default,
                   help="print the traceback of an error")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress lines or bars on stderr")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trajreg")
    except PackageNotFoundError:  # pragma: no cover - a source tree never installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="trajreg", description="Measure how training techniques shape a neural "
               "network's optimization trajectory (docs: README.md, make docs).")
    p.add_argument("--version", action="version", version=f"trajreg {_version()}")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train, record and analyse one run")
    r.add_argument("config", help="run config (YAML)")
    r.add_argument("--out", type=out_path("runs/<config>-<time>"),
                   help="run directory to create (default: runs/<config>-<time>)")
    r.add_argument("--no-figures", action="store_true",
                   help="skip the PNG figures (trajreg analyze draws them later)")
    r.add_argument("--tensorboard", action="store_true",
                   help="mirror per-step quantities and gamma per epoch to RUN_DIR/tensorboard")
    r.add_argument("--wandb", action="store_true",
                   help="log the finished run to Weights & Biases (WANDB_* variables apply)")
    r.add_argument("--mlflow", action="store_true",
                   help="log the finished run to MLflow (MLFLOW_TRACKING_URI and "
                        "MLFLOW_EXPERIMENT_NAME apply)")
    r.add_argument("--nproc", type=_nproc,  # trajreg.distributed
                   help="train on N processes (overrides train.distributed.nproc; "
                        "without that section: DDP on gloo)")
    a = sub.add_parser("analyze", help="recompute the analysis of a finished run")
    a.add_argument("run_dir")
    a.add_argument("--reference", choices=["final", "best"])
    a.add_argument("--eps", type=_eps, help="comma-separated violation fractions, e.g. 0,0.05")
    a.add_argument("--delta", type=_delta, help="constant delta (default: eta_t / 2)")
    a.add_argument("--window", type=_window, help="START:END steps (default: converging phase)")
    c = sub.add_parser("checkpoints", help="measure a finished run from its checkpoints")
    c.add_argument("paths", nargs="+", metavar="PATH",
                   help="checkpoints, or directories of them (Hugging Face checkpoint-N "
                        "folders, Lightning .ckpt, torch.save files, .safetensors)")
    c.add_argument("--out", required=True, type=out_path("--out"),
                   help="run directory to create")
    how = c.add_mutually_exclusive_group()
    how.add_argument("--config", help="run config (YAML) whose model and data sections "
                                      "name trajreg's net and its training set")
    how.add_argument("--entry", metavar="MODULE:FUNCTION",
                     help="a function returning (model, loss_fn, batches)")
    data = c.add_mutually_exclusive_group()
    data.add_argument("--text", help="Hugging Face: a UTF-8 text file, tokenized with the "
                                     "checkpoint's tokenizer")
    data.add_argument("--tokens", help="Hugging Face: token ids (.npy, or integers as text)")
    c.add_argument("--batches", type=_positive, metavar="N",
                   help="evaluation batches (default: all; 16 for Hugging Face)")
    c.add_argument("--batch-size", type=_positive, default=8,
                   help="Hugging Face: windows per batch (default 8)")
    c.add_argument("--block-size", type=_positive,
                   help="Hugging Face: tokens per window (default: the context, <= 256)")
    c.add_argument("--steps", type=_steps, help="comma-separated steps, one per PATH")
    c.add_argument("--reference", choices=["final", "last", "best"], default="final",
                   help="x*: the last checkpoint (final, last) or the lowest F (best)")
    c.add_argument("--eps", type=_eps, default=[0.0, 0.05],
                   help="comma-separated violation fractions (default 0,0.05)")
    c.add_argument("--sketch-dim", type=_positive, metavar="K",
                   help="CountSketch the vectors to K numbers (each checkpoint read once)")
    c.add_argument("--buffers", action="store_true",
                   help="floating-point buffers (batch-norm statistics) are part of x")
    c.add_argument("--interval-points", type=_nonnegative, default=1, metavar="M",
                   help="F at M points inside each interval (default 1; 0: none)")
    c.add_argument("--no-mli", action="store_true",
                   help="skip the interpolation from the first checkpoint to x*")
    c.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    c.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    add_study_parsers(sub)
    for command in sub.choices.values():
        _common(command)
    return p


def _print_summary(summary: Summary) -> None:
    if summary.analysed:
        g, kap, window = summary.gamma_hat, summary.kappa_hat, summary.window
        assert g is not None and kap is not None and window is not None  # analysed
        start, end = window
        print(f"window [{start}, {end}) of {summary.n_steps} steps")
        for key in g:
            print(f"gamma_hat(eps={key}) = {g[key]:.6g}   kappa_hat(eps={key}) = {kap[key]:.6g}")
        print(f"gamma_bar = {summary.gamma_bar:.6g}   final loss = {summary.final_loss:.6g}")
    else:
        print(f"{summary.n_steps} steps (record mode off: no analysis)   "
              f"final loss = {summary.final_loss:.6g}")
    if summary.diverged:
        print(f"diverged at step {summary.diverged_step}")


class _State:
    """What ``main``'s signal handling needs to know: the run directory being made,
    its config, and whether the run directory is complete (renamed into place)."""

    def __init__(self) -> None:
        self.out: Path | None = None
        self.config: dict[str, Any] | None = None
        self.complete = False
        self.finished = False  # the command returned (its status is decided)

    def run_complete(self) -> bool:
        """The run directory is in place: ``run`` returned, or ``out`` holds a finished
        run of this config (a signal arrived between the rename and the return)."""
        if self.complete:
            return True
        if self.out is None or self.config is None:
            return False
        try:
            from trajreg.run.rundir import read_config

            if not (self.out / "summary.json").is_file():
                return False
            written = read_config(self.out).run
            return written is not None and written.to_dict() == self.config
        except Exception:  # noqa: BLE001 -- unreadable or partial: not ours, not complete
            return False


_STATE = _State()


def _run(args: argparse.Namespace) -> int:
    from trajreg.distributed.launch import run, with_nproc
    from trajreg.run import rundir, runner
    from trajreg.run.trackers import TRACKERS
    from trajreg.train.config import load_config

    cfg = load_config(args.config)
    if args.nproc is not None:  # trajreg.distributed: --nproc N overrides the config's
        cfg = with_nproc(cfg, args.nproc)
    out = Path(args.out) if args.out is not None else runner.default_out(args.config)
    rundir.check_new_out(out)  # before the data are loaded; the rename checks again
    _STATE.out, _STATE.config = out, cfg.to_dict()
    trackers = [t for t in TRACKERS if getattr(args, t)]  # --tensorboard, --wandb, --mlflow
    out, summary = run(cfg, out, figures=not args.no_figures, trackers=trackers,
                       progress=False if args.quiet else None)  # here, or on N processes
    _STATE.complete = True
    _print_summary(summary)
    print(f"run directory: {out}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from trajreg.run import runner

    summary = runner.analyze(args.run_dir, reference=args.reference, eps=args.eps,
                             delta=args.delta, window=args.window,
                             progress=False if args.quiet else None)
    _print_summary(summary)
    print(f"updated: {args.run_dir}")
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    from trajreg.checkpoints import CheckpointOptions, measure_checkpoints

    options = CheckpointOptions(
        reference=args.reference, eps=tuple(args.eps), sketch_dim=args.sketch_dim,
        buffers=args.buffers, interval_points=args.interval_points, mli=not args.no_mli,
        device=args.device)
    _STATE.out = Path(args.out)
    out, summary = measure_checkpoints(
        args.paths, args.out, steps=args.steps, config=args.config, entry=args.entry,
        text=args.text, tokens=args.tokens, n_batches=args.batches,
        batch_size=args.batch_size, block_size=args.block_size, options=options,
        figures=not args.no_figures, progress=False if args.quiet else None)
    _STATE.complete = True
    facts = summary.checkpoints or {}
    start, end = summary.window or (0, 0)
    print(f"{facts.get('n_checkpoints')} checkpoints, steps {facts['steps'][0]} to "
          f"{summary.n_steps}; x* at step {summary.reference_step} ({summary.reference}); "
          f"window: checkpoints [{start}, {end})")
    for key, value in (summary.gamma_hat or {}).items():
        disp = facts.get("gamma_hat_disp", {}).get(key, float("nan"))
        print(f"gamma_hat(eps={key}) = {value:.6g} (epochwise)   {disp:.6g} (displacement)")
    print(f"star-convex fraction = {summary.star_convex_fraction:.3g}   path ratio = "
          f"{summary.path_ratio:.4g}   F: {summary.full_loss[0]:.4g} -> {summary.final_loss:.4g}")
    print(f"run directory: {out}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "checkpoints":
        return _checkpoints(args)
    if args.command == "analyze":
        return _analyze(args)
    from trajreg.study import cli as study_cli

    if args.command == "study":
        return study_cli.run_study_command(args)
    return study_cli.run_report_command(args)


def _unchanged(args: argparse.Namespace) -> str:
    """What a failed command left behind, for the one-line message."""
    return {"run": "nothing was written", "checkpoints": "nothing was written",
            "analyze": "the run directory is unchanged"}.get(args.command, "")


def _interrupted_message() -> str:
    if _STATE.run_complete():
        return f"trajreg: interrupted after the run was complete: {_STATE.out} is kept"
    return "trajreg: interrupted"


def _late_signal(signum: int, _frame: object) -> None:
    """A signal once the command has finished (the process is printing or exiting):
    one line and the signal's status at once, no traceback from an exit handler."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.write(sys.stderr.fileno(), (_interrupted_message() + "\n").encode())
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


@contextmanager
def _signals_raise(process: bool) -> Iterator[None]:
    """SIGTERM (and SIGINT) raise ``Interrupted`` in the main thread while the command
    runs, so the clean-up of partial directories happens. ``process`` (``main`` runs
    the command line, not called in process): after the command, the handlers stay,
    so a signal while the process prints its result or exits ends it with one line
    (``_late_signal``); otherwise the previous handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if _STATE.finished:
            if process:
                _late_signal(signum, frame)
            return  # in process, between the command's end and the restore: its result stands
        raise Interrupted(signum)

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _STATE.finished = True
        if not process:
            for s, h in before.items():
                signal.signal(s, h)


@contextmanager
def _warnings_one_line() -> Iterator[None]:
    """Warnings as ``trajreg: warning: ...``, one line each, while the command runs
    (Python's format, with the file and source line, is restored after)."""
    before = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        try:
            print(f"trajreg: warning: {one_line(message)}", file=file or sys.stderr,
                  flush=True)
        except (OSError, ValueError):
            pass

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = before


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    debug = args.debug

    def fail(message: str, status: int) -> int:
        if debug:
            traceback.print_exc()
        print(one_line(message), file=sys.stderr, flush=True)
        return status

    global _STATE
    _STATE = _State()
    try:
        with _signals_raise(process=argv is None), _warnings_one_line():
            return _dispatch(args)
    except (Interrupted, KeyboardInterrupt) as exc:
        return fail(_interrupted_message(),
                    exc.status if isinstance(exc, Interrupted) else 128 + signal.SIGINT)
    except UserError as exc:  # ConfigError and DamagedRun included
        return fail(f"trajreg: error: {exc}", 2)
    except ReplayMismatch as exc:
        return fail(f"trajreg: replay failed: {exc}", 1)
    except BrokenPipeError:  # stdout closed early (`trajreg ... | head`): quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            return fail(_internal(exc), 1)
        where = f": {exc.filename}" if exc.filename else ""
        left = _unchanged(args)
        return fail(f"trajreg: error: {os.strerror(exc.errno)}{where}"
                    + (f" ({left})" if left else ""), 2)
    except Exception as exc:
        return fail(_internal(exc), 1)


def _internal(exc: BaseException) -> str:
    return (f"trajreg: internal error: {type(exc).__name__}: {exc} (please report it; "
            "rerun with --debug for the traceback)")


if __name__ == "__main__":
    sys.exit(main())
