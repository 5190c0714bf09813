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
    cli.py         the study and report commands (trajreg.cli delegates to them)
    presets/       the built-in paper study (quick, standard)
"""

from __future__ import annotations

from trajreg.study.execute import StudyResult, run_study
from trajreg.study.report import write_report
from trajreg.study.spec import PRESETS, Study, load_study, load_study_dir, preset_path

__all__ = ["PRESETS", "Study", "StudyResult", "load_study", "load_study_dir", "preset_path",
           "run_study", "write_report"]
