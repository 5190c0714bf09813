"""Studies: grids of runs over architectures x techniques x optimizers x seeds,
executed resumably (serially, in local processes or on Dask) and reported.

    spec.py        study files, grid expansion, run keys
    executors.py   serial / process / dask
    execute.py     run_study: resume, failures, progress
    stats.py       rank correlation with a bootstrap interval, paired comparisons
    report.py      runs.csv, techniques.csv, figures, report.html
    presets/       the built-in paper study (quick, standard)
"""

from __future__ import annotations

from pathlib import Path

from trajreg.errors import UserError
from trajreg.study.execute import StudyResult, run_study
from trajreg.study.report import write_report
from trajreg.study.spec import Study, load_study

PRESETS = Path(__file__).parent / "presets"


def preset_path(preset: str) -> Path:
    """The study file of the built-in paper study at a preset (quick, standard)."""
    path = PRESETS / f"paper-{preset}.yaml"
    if not path.is_file():
        raise UserError(f"--preset: unknown preset {preset!r} (quick, standard)")
    return path


def load_study_dir(study_dir: str | Path) -> Study:
    """The study a study directory was run with (its ``study.yaml``)."""
    import yaml

    path = Path(study_dir) / "study.yaml"
    if not path.is_file():
        raise UserError(f"{study_dir}: not a study directory (no study.yaml)")
    raw = yaml.safe_load(path.read_text())
    raw.pop("trajreg_version", None)
    return load_study(raw)


__all__ = ["Study", "StudyResult", "load_study", "load_study_dir", "preset_path",
           "run_study", "write_report"]
