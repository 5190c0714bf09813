"""One rank of a distributed ``trajreg run``: ``python -m trajreg.distributed.worker RUN_DIR``,
started by torch.distributed's launcher (``trajreg.distributed.agent``), which sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.

RUN_DIR is the run's partial directory, holding config.yaml (written by the launching
process). Every rank trains on its part of every global batch; then:

- DDP: every rank holds every parameter, so rank 0 alone records (any record mode but
  replay), exactly as a single process records; with ``record.curvature`` every rank
  then measures the curvature together (each rank's part of the minibatch,
  ``trajreg.distributed.measure.measure_curvature``) before the ranks part.
- FSDP2: every rank records its own shard with store, sample or sketch mode into
  ``trajectory/rank-NNNNN/`` (sketch: hashed by the entries' global flat indices);
  rank 0 writes ``trajectory/shards.json`` (``trajreg.record.shards``).

After training the ranks gather the final state onto rank 0 (a collective) and leave
the process group in order (``process.clean_shutdown``); rank 0 then measures and
analyses in one process, as ``trajreg run`` does, and writes metrics.parquet, the
figures, final_state.pt and summary.json (last). A rank that fails writes one line to
``LAUNCH_DIR/rank-N.error`` and stderr and exits at once (1; 2 for a user error): the
launcher stops the other ranks and the launching process names the rank.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ERROR_FILE = "rank-{rank}.error"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trajreg.distributed.worker")
    p.add_argument("run_dir")
    p.add_argument("--launch-dir", required=True)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def run_rank(args: argparse.Namespace, rank: int, world: int) -> None:
    """Train this rank's part; rank 0 also measures and writes the run directory."""
    import torch
    import torch.distributed as dist

    from trajreg.distributed.process import clean_shutdown
    from trajreg.distributed.train import build_distributed, full_state, train_distributed
    from trajreg.record.modes import get_mode
    from trajreg.record.recorder import Recorder, shard_recorder
    from trajreg.run import rundir
    from trajreg.run.progress import phase
    from trajreg.train.data import load_data
    from trajreg.train.loop import total_steps

    run_dir = Path(args.run_dir)
    progress = False if args.quiet or rank != 0 else None
    cfg = rundir.read_config(run_dir).run
    assert cfg is not None and cfg.train.distributed is not None
    dcfg = cfg.train.distributed
    if cfg.train.device.startswith("cuda"):
        cfg.train.device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(torch.device(cfg.train.device))
    if cfg.train.threads is None:  # the ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(dcfg.backend)
    data = load_data(cfg.data, max_memory_gb=cfg.train.max_memory_gb,
                     block_size=getattr(cfg.model, "block_size", None))
    mode = get_mode(cfg.record.mode).from_config(cfg.record, cfg.seed)
    steps = total_steps(cfg, data)
    # every rank plans: the one-pass modes fix their rate from T there, and every rank
    # must keep the same steps; rank 0 alone warns
    with warnings.catch_warnings():
        if rank != 0:
            warnings.simplefilter("ignore")
        mode.plan(steps, cfg.analysis)
    model, opt, sched = build_distributed(cfg, data, dcfg.strategy, world)
    capacity = steps + 1
    trajectory = run_dir / rundir.TRAJECTORY
    recorder = None
    curvature = cfg.record.curvature  # DDP only (config.py): rank 0 keeps the rows
    if dcfg.strategy == "ddp":
        if rank == 0:
            recorder = Recorder(opt, trajectory, mode=mode, capacity=capacity,
                                curvature=None if curvature is None
                                else (curvature.rate, cfg.seed))
    elif mode.hooks:  # fsdp (a shardable mode, config.py): every rank its shard
        recorder = shard_recorder(opt, trajectory, mode=mode, rank=rank, world=world,
                                  capacity=capacity)
    phase(f"training {cfg.train.epochs} epochs ({steps} steps) on "
          f"{world} processes ({dcfg.strategy}, {dcfg.backend})", progress)
    try:
        log = train_distributed(cfg, data, model, opt, sched, rank=rank, world=world)
    finally:
        if recorder is not None:
            recorder.close()
    curved = None
    if curvature is not None:
        from trajreg.distributed.measure import measure_curvature

        phase("measuring curvature on every rank", progress)
        curved = measure_curvature(cfg, data, log, model, run_dir, rank=rank, world=world)
    state = full_state(model, dcfg.strategy, rank)
    clean_shutdown()  # every collective is done: the rest is rank 0's, in one process
    if rank == 0:
        write_run(cfg, data, log, state, mode, run_dir, world=world, progress=progress,
                  figures=not args.no_figures, tensorboard=args.tensorboard, curved=curved)


def write_run(cfg, data, log, state, mode, run_dir: Path, *, world: int, progress,
              figures: bool, tensorboard: bool, curved=None) -> None:
    """Rank 0 after training: what ``runner.run`` does after its loop, on a plain model
    holding the final state. ``curved``: ``record.curvature`` as the ranks measured it
    (``measure.measure_curvature``)."""
    from trajreg.distributed.measure import DistributedRunContext
    from trajreg.run import analysis, rundir
    from trajreg.run.progress import phase
    from trajreg.run.runner import measure, put_curvature, write_analysis
    from trajreg.train.loop import build, evaluate
    from trajreg.train.models import n_params

    model, _, _ = build(cfg, data)
    model.load_state_dict(state)
    final_state = rundir.write_final_state(run_dir, model)
    phase(f"measuring ({mode.name}) against x* ({cfg.analysis.reference})", progress)
    ctx = DistributedRunContext(cfg, data, log, model, final_state, run_dir, progress,
                                world=world)
    measured, best = measure(mode, ctx, cfg.analysis.reference)
    if curved is not None and measured is not None:
        found, at_end = curved
        put_curvature([m for m in (measured, best) if m is not None], found, at_end,
                      log.steps)
    facts = analysis.RunFacts(n_params=n_params(model), task=data.task,
                              evaluation=evaluate(cfg, model, data))
    phase("writing the run directory", progress)
    rundir.write_data_facts(run_dir, data)
    write_analysis(run_dir, log, measured, mode=mode.name, reference=cfg.analysis.reference,
                   options=analysis.AnalysisOptions.from_config(cfg.analysis), facts=facts,
                   best=best, figures=figures, tensorboard=tensorboard)


def _report(exc: BaseException, rank: int, launch_dir: Path) -> int:
    """One line for the launching process (and stderr); the exit status."""
    from trajreg.errors import UserError

    text = " ".join(str(exc).split()) or type(exc).__name__
    line = text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"
    try:
        (launch_dir / ERROR_FILE.format(rank=rank)).write_text(line + "\n")
    except OSError:
        pass
    print(f"trajreg: rank {rank}: error: {line}", file=sys.stderr, flush=True)
    if os.environ.get("TRAJREG_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    return 2 if isinstance(exc, UserError) else 1


def main(argv: list[str] | None = None) -> int:
    from trajreg.distributed.process import die_with_parent, exit_rank

    die_with_parent()
    args = _args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        run_rank(args, rank, world)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then exit
        status = _report(exc, rank, Path(args.launch_dir))
        # no orderly teardown after a failure: the other ranks may be blocked in a
        # collective; the launcher stops them
        os._exit(status)
    exit_rank(0)  # done: no interpreter teardown (trajreg.distributed.process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
