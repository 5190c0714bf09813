"""The launcher process: torch.distributed's elastic agent, started by ``trajreg run``.

``python -m trajreg.distributed.agent --nproc N --failures FILE -- WORKER_ARGS...`` runs
``torch.distributed.launcher.api.elastic_launch`` (what ``torchrun --standalone
--nproc_per_node N`` runs: a c10d rendezvous on a free local port, no restarts) with
``python -m trajreg.distributed.worker WORKER_ARGS...`` as the entry point. When a rank
fails the agent stops the others and this process writes the failures (rank, exit
status, signal, pid, time) as JSON to FILE and exits 1, so ``trajreg run`` can name the
rank in one line. It runs in its own process so that the agent's signal handlers and
environment variables never touch the caller's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid


def main(argv: list[str] | None = None) -> int:
    from trajreg.distributed.process import die_with_parent

    die_with_parent()
    p = argparse.ArgumentParser(prog="trajreg.distributed.agent")
    p.add_argument("--nproc", type=int, required=True)
    p.add_argument("--failures", required=True)
    p.add_argument("--module", default="trajreg.distributed.worker")
    p.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    worker_args = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args

    # the agent's own log lines (launch configs, the failure banner) stay out of the
    # user's terminal: the failures reach ``trajreg run`` through FILE
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=args.nproc,
                          run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", args.module, *worker_args)
    except ChildFailedError as exc:
        failures = {str(rank): {"exitcode": f.exitcode, "signal": f.signal_name(),
                                "pid": f.pid, "timestamp": f.timestamp}
                    for rank, f in exc.failures.items()}
        with open(args.failures, "w") as out:
            json.dump(failures, out)
        return 1
    except SignalException as exc:  # SIGTERM/SIGINT from trajreg run: ranks already stopped
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
