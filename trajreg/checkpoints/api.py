"""``measure_checkpoints``: a checkpoint series into a run directory (``trajreg checkpoints``).

The run directory has the usual layout (``trajreg.run.rundir``): config.yaml (its
``checkpoints`` section: the paths, the steps, how the model and data were named, the
options), metrics.parquet (one row per checkpoint), summary.json, the figures and
checksums.json. It is written under a temporary name and renamed when complete; bad
input (no checkpoints, a damaged file, a missing parameter, a shape that differs) is a
``UserError`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajreg.checkpoints.measure import (
    CheckpointOptions,
    measure_series,
    series_table,
    summarize_series,
)
from trajreg.checkpoints.series import Checkpoint, find_checkpoints
from trajreg.checkpoints.target import (
    LossFn,
    Target,
    from_config,
    from_entry,
    from_huggingface,
    from_objects,
)
from trajreg.errors import UserError
from trajreg.run import rundir
from trajreg.run.progress import phase
from trajreg.run.summary import Summary, write_summary

__all__ = ["measure_checkpoints"]

SECTION = "checkpoints"  # config.yaml's section of a run measured from checkpoints


def _target(first: Checkpoint, *, config: Any, entry: str | None,
            model: Any, loss_fn: LossFn | None, batches: Any, text: Any, tokens: Any,
            n_batches: int | None, batch_size: int, block_size: int | None, device: str
            ) -> tuple[Target, dict[str, Any]]:
    named = [k for k, v in (("config", config), ("entry", entry), ("model", model))
             if v is not None]
    if len(named) > 1:
        raise UserError(f"name the model one way: {' and '.join(named)} were both given")
    if (text is not None or tokens is not None) and named:
        raise UserError("--text and --tokens are for Hugging Face checkpoint folders; with "
                        f"{named[0]} the evaluation batches come from it")
    if config is not None:
        target = from_config(config, n_batches, device)
        return target, {"config": target.facts["config"]}
    if entry is not None:
        return from_entry(entry, n_batches), {"entry": entry}
    if model is not None:
        if loss_fn is None or batches is None:
            raise UserError("model= needs loss_fn= and batches= as well")
        return from_objects(model, loss_fn, batches, n_batches), {"python": type(model).__name__}
    if first.kind == "huggingface" and (first.path / "config.json").is_file():
        target = from_huggingface(first.path, text=text, tokens=tokens,
                                  n_batches=16 if n_batches is None else n_batches,
                                  batch_size=batch_size, block_size=block_size, device=device)
        return target, {"huggingface": target.facts}
    raise UserError(f"{first.path}: name the model and the data: --config RUN.yaml, --entry "
                    "MODULE:FUNCTION, or Hugging Face checkpoint folders (config.json) with "
                    "--text FILE or --tokens FILE")


def _names(how: dict[str, Any], target: Target) -> dict[str, str]:
    """The network and the data by name (a study's runs.csv shows them)."""
    if "config" in how:
        model, data = how["config"]["model"], how["config"]["data"]
        return {"architecture": model.get("variant") or model["name"], "dataset": data["name"]}
    if "huggingface" in how:
        facts = how["huggingface"]
        return {"architecture": facts["huggingface"], "dataset": Path(facts["data"]).name}
    return {"architecture": type(target.model).__name__,
            "dataset": how.get("entry", "batches")}


def measure_checkpoints(paths: Sequence[str | Path] | str | Path, out: str | Path, *,
                        steps: Sequence[int] | None = None,
                        config: str | Path | dict[str, Any] | None = None,
                        entry: str | None = None, model: Any = None,
                        loss_fn: LossFn | None = None, batches: Any = None,
                        text: str | Path | None = None, tokens: str | Path | None = None,
                        n_batches: int | None = None, batch_size: int = 8,
                        block_size: int | None = None,
                        options: CheckpointOptions | None = None, figures: bool = True,
                        progress: bool | None = None, **option_values: Any
                        ) -> tuple[Path, Summary]:
    """Measure the checkpoints ``paths`` into the new run directory ``out``.

    The model and data are named by one of: ``config`` (a trajreg run config), ``entry``
    (``"module:function"`` returning ``(model, loss_fn, batches)``), ``model`` with
    ``loss_fn(model, batch)`` and ``batches``, or, for Hugging Face checkpoint folders,
    nothing (the model comes from the folder's config.json) and ``text`` or ``tokens``.
    ``n_batches``: how many evaluation batches (default: all of ``batches``, the whole
    training set of a config, 16 windows batches for Hugging Face). ``options`` (or its
    fields as keywords: ``reference="best"``, ``sketch_dim=4096``, ``eps=(0, 0.05)``)
    as ``CheckpointOptions``.
    """
    if options is None:
        options = CheckpointOptions(**option_values)
    elif option_values:
        raise UserError(f"give options= or option keywords, not both "
                        f"({', '.join(option_values)})")
    if isinstance(paths, str | Path):
        paths = [paths]
    if n_batches is not None and (isinstance(n_batches, bool) or n_batches < 1):
        raise UserError(f"--batches: must be >= 1, got {n_batches!r}")
    out = rundir.check_new_out(Path(out))
    checkpoints = find_checkpoints(list(paths), steps)
    target, how = _target(checkpoints[0], config=config, entry=entry, model=model,
                          loss_fn=loss_fn, batches=batches, text=text, tokens=tokens,
                          n_batches=n_batches, batch_size=batch_size, block_size=block_size,
                          device=options.device)
    m = measure_series(checkpoints, target, options, progress)
    table = series_table(m)
    summary = summarize_series(m, table, options, target,
                               {"named_by": sorted(how)[0], **_names(how, target)})
    phase(f"writing {out}", progress)
    with rundir.atomic_dir(out) as tmp:
        rundir.write_config(tmp, {SECTION: {
            "paths": [str(p) for p in paths], "steps": None if steps is None else list(steps),
            **how, "n_batches": n_batches, "options": options.to_dict()}})
        rundir.write_parquet(tmp / rundir.METRICS, table)
        if figures:
            from trajreg.checkpoints.figures import write_figures

            write_figures(tmp, table, summary.to_dict())
        write_summary(tmp, summary)
    return out, summary
