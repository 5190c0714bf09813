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

from trajreg._lazy import lazy_exports

# lazy (PEP 562): the CLI checks a study file without loading torch, scipy or matplotlib
_EXPORTS = {"PRESETS": "trajreg.study.spec", "Study": "trajreg.study.spec",
            "StudyResult": "trajreg.study.execute", "load_study": "trajreg.study.spec",
            "load_study_dir": "trajreg.study.spec", "preset_path": "trajreg.study.spec",
            "run_study": "trajreg.study.execute", "write_report": "trajreg.study.report"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
