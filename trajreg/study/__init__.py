"""Studies: grids of runs over architectures x techniques x optimizers x seeds,
executed resumably (serially, in local processes or on Dask) and reported.

    spec.py        study files, grid expansion, run keys
    executors.py   serial / process / dask
    execute.py     run_study: resume, failures, progress
    layout.py      the study directory: where runs live, each run's state
    stats.py       the statistics (scipy.stats): paired tests, intervals, correlations
    tables.py      runs.csv, techniques.csv and the other tables, as DataFrames
    verdicts.py    the report's sentences
    figures.py     the report's figures
    html.py        report.html from templates/report.html.j2
    report.py      write_report: all of the above into the study directory
    presets/       the built-in paper study (quick, standard)
"""

from __future__ import annotations

from pathlib import Path

from trajreg.errors import UserError
from trajreg.study.execute import StudyResult, run_study
from trajreg.study.layout import read_study_file
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
    return load_study(read_study_file(study_dir))


__all__ = ["Study", "StudyResult", "load_study", "load_study_dir", "preset_path",
           "run_study", "write_report"]
