"""Mirror a finished run to Weights & Biases or MLflow (TensorBoard: ``tensorboard.py``).

Read back from the run directory once it is complete (metrics.parquet, summary.json,
config.yaml, the figures), so a tracker that fails never costs the run. Every mirror
logs the same scalars under the same names as TensorBoard's, prefixed ``trajreg/``:
``trajreg/step/<quantity>`` at each step (against ``trajreg/step``),
``trajreg/epoch/<series>`` (gamma_hat_eps*, gamma_bar, full_loss) at each epoch, the
summary's scalars flattened (``trajreg/gamma_hat/0.05``), the config, and summary.json,
config.yaml and the figures as files.

- W&B: one ``log`` per step and per epoch (all its quantities in one dict), the summary
  into ``run.summary``, the config into ``run.config["trajreg"]``, the files as one
  artifact of type ``trajreg-run``.
- MLflow: ``log_batch`` with up to 1000 metrics a call (the summary's numbers as
  metrics at step 0, its strings and the config as params), the files under the
  artifact path ``trajreg/``.

Each logs into a run that already exists where there is one (``TrackerRuns``: the
framework's logger's, or the process's active ``wandb.run`` / ``mlflow.active_run()``),
else starts a run named after the run directory and ends it; it never ends a run it did
not start. Needs ``pip install 'trajreg[wandb]'`` or ``'trajreg[mlflow]'``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import pandas as pd
import yaml

from trajreg.errors import UserError
from trajreg.run import rundir
from trajreg.run.tensorboard import epoch_rows, require_tensorboard, step_rows

Tracker = Literal["tensorboard", "wandb", "mlflow"]
TRACKERS: tuple[Tracker, ...] = get_args(Tracker)
MLFLOW_METRICS_PER_BATCH = 1000  # MLflow's limits on one log_batch call
MLFLOW_PARAMS_PER_BATCH = 100
MLFLOW_PARAM_LENGTH = 500  # longer values are cut: older MLflow servers refuse them


def tracker_names(trackers: Iterable[str] = (), tensorboard: bool = False
                  ) -> tuple[Tracker, ...]:
    """The trackers asked for (``tensorboard=True`` adds TensorBoard), each once, in
    ``TRACKERS``' order; an unknown name is a UserError."""
    if isinstance(trackers, str):
        trackers = (trackers,)
    names = set(trackers) | ({"tensorboard"} if tensorboard else set())
    unknown = sorted(names - set(TRACKERS))
    if unknown:
        raise UserError(f"trackers: unknown {', '.join(map(repr, unknown))} "
                        f"(known: {', '.join(TRACKERS)})")
    return tuple(t for t in TRACKERS if t in names)


def require_trackers(names: Sequence[Tracker]) -> None:
    """A UserError saying what to install for each tracker whose package is missing
    (checked before training, as ``require_tensorboard``)."""
    if "tensorboard" in names:
        require_tensorboard()
    for name in names:
        if name == "tensorboard":
            continue
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"{name}: the {name} package is not installed; "
                            f"pip install 'trajreg[{name}]'") from None


@dataclasses.dataclass(frozen=True)
class TrackerRuns:
    """Runs of other code to log into; None: trajreg starts a run of its own."""

    wandb: Any = None  # a wandb Run (a WandbLogger's experiment, wandb.run)
    mlflow: tuple[Any, str] | None = None  # (an MlflowClient, a run id)


def _active_mlflow() -> tuple[Any, str] | None:
    import mlflow

    active = mlflow.active_run()
    return None if active is None else (mlflow.MlflowClient(), active.info.run_id)


def attach(names: Sequence[Tracker], runs: TrackerRuns | None = None) -> TrackerRuns:
    """``runs`` completed with the process's active runs; called before training, it
    also checks that MLflow's tracking store can hold a run trajreg starts (MLflow 3
    refuses a ``file:`` store without ``MLFLOW_ALLOW_FILE_STORE=true``, mlflow-skinny
    its default ``sqlite:`` one), a UserError naming the store."""
    runs = runs or TrackerRuns()
    if "wandb" in names and runs.wandb is None:
        import wandb

        runs = dataclasses.replace(runs, wandb=wandb.run)
    if "mlflow" in names and runs.mlflow is None:
        runs = dataclasses.replace(runs, mlflow=_active_mlflow())
        if runs.mlflow is None:
            import mlflow

            try:
                mlflow.MlflowClient()
            except Exception as exc:  # noqa: BLE001 -- MLflow's errors for a store vary
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise UserError(f"mlflow: cannot use the tracking store "
                                f"{mlflow.get_tracking_uri()}: {first or type(exc).__name__} "
                                "(MLFLOW_TRACKING_URI chooses the store)") from None
    return runs


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """The scalars of a nested dict by path (``gamma_hat/0.05``); lists and nulls are
    left out (the per-epoch series are logged as series), non-finite numbers too."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "/"))
        elif isinstance(value, bool | str) or (isinstance(value, int | float)
                                               and math.isfinite(value)):
            flat[path] = value
    return flat


@dataclasses.dataclass
class _Mirrored:
    """What every tracker logs of one finished run directory."""

    name: str
    steps: list[tuple[int, dict[str, float]]]
    epochs: list[tuple[int, dict[str, float]]]
    summary: dict[str, Any]  # flattened scalars
    config: dict[str, Any]
    files: list[Path]

    @classmethod
    def read(cls, run_dir: Path) -> _Mirrored:
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
        config = yaml.safe_load((run_dir / rundir.CONFIG).read_text()) or {}
        return cls(name=run_dir.name,
                   steps=step_rows(pd.read_parquet(run_dir / rundir.METRICS)),
                   epochs=epoch_rows(summary), summary=_flatten(summary), config=config,
                   files=[run_dir / rundir.SUMMARY, run_dir / rundir.CONFIG,
                          *sorted(run_dir.glob("*.png"))])

    def series(self) -> Iterator[tuple[str, int, dict[str, float]]]:
        """(step or epoch, its index, {"trajreg/KIND/quantity": value})."""
        for kind, rows in (("step", self.steps), ("epoch", self.epochs)):
            for index, row in rows:
                yield kind, index, {f"trajreg/{kind}/{k}": v for k, v in row.items()}


def _wandb(run_dir: Path, mirrored: _Mirrored, run: Any) -> None:
    import wandb

    own = run is None
    if own:
        run = wandb.init(name=mirrored.name, job_type="trajreg",
                         project=os.environ.get("WANDB_PROJECT", "trajreg"),
                         config={"trajreg": mirrored.config},
                         settings=wandb.Settings(console="off"))
    else:
        run.config.update({"trajreg": mirrored.config}, allow_val_change=True)
    try:
        # an x-axis of our own: a framework's run has its own steps in wandb's _step
        for kind in ("step", "epoch"):
            run.define_metric(f"trajreg/{kind}/*", step_metric=f"trajreg/{kind}")
        for kind, index, row in mirrored.series():
            run.log({f"trajreg/{kind}": index, **row})
        run.summary.update({f"trajreg/{k}": v for k, v in mirrored.summary.items()})
        artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", mirrored.name), type="trajreg-run",
                                  description=f"trajreg run directory {run_dir}")
        for path in mirrored.files:
            artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact)
    except BaseException:
        if own:
            run.finish(exit_code=1)
        raise
    if own:
        run.finish()


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _mlflow(run_dir: Path, mirrored: _Mirrored, target: tuple[Any, str] | None) -> None:
    import mlflow
    from mlflow.entities import Metric, Param

    own = target is None
    if own:
        client, run_id = mlflow.MlflowClient(), mlflow.start_run(
            run_name=mirrored.name).info.run_id
    else:
        client, run_id = target  # type: ignore[misc]
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, index) for _, index, row in mirrored.series()
                   for key, value in row.items()]
        params = [("config/" + k, v) for k, v in _flatten(mirrored.config).items()]
        for key, value in mirrored.summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics.append(Metric(f"trajreg/{key}", float(value), now, 0))
            else:
                params.append((key, value))
        for chunk in _chunks(metrics, MLFLOW_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
        # param keys allow letters, digits, _ - . space : /
        entities = [Param(re.sub(r"[^\w\-. :/]", "_", f"trajreg/{k}"),
                          str(v)[:MLFLOW_PARAM_LENGTH]) for k, v in params]
        for chunk in _chunks(entities, MLFLOW_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=chunk)
        for path in mirrored.files:
            client.log_artifact(run_id, str(path), "trajreg")
    except BaseException:
        if own:
            mlflow.end_run("FAILED")
        raise
    if own:
        mlflow.end_run()


def mirror(run_dir: str | Path, names: Sequence[Tracker],
           runs: TrackerRuns | None = None) -> None:
    """Log the complete run directory ``run_dir`` to each of ``names`` (TensorBoard is
    written with the run, into it, and skipped here). A tracker's failure is a
    UserError naming it, after the others have logged."""
    run_dir = Path(run_dir)
    names = [n for n in names if n != "tensorboard"]
    if not names:
        return
    runs = runs or TrackerRuns()
    mirrored = _Mirrored.read(run_dir)
    failed = []
    for name in names:
        try:
            if name == "wandb":
                import wandb

                _wandb(run_dir, mirrored, wandb.run if runs.wandb is None else runs.wandb)
            else:
                _mlflow(run_dir, mirrored,
                        _active_mlflow() if runs.mlflow is None else runs.mlflow)
        except Exception as exc:  # noqa: BLE001 -- any tracker's error, reported as such
            failed.append(f"{name}: {' '.join(str(exc).split()) or type(exc).__name__}")
    if failed:
        raise UserError(f"{run_dir} is complete, but logging it failed: "
                        + "; ".join(failed))
