"""Import structure: the mathematics stays free of torch, the package entry is lazy."""

import subprocess
import sys


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_math_does_not_import_torch():
    _run("import trajreg.principle, sys; "
         "heavy = [m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules]; "
         "assert not heavy, heavy")


def test_package_entry_is_lazy_and_exports_resolve():
    _run("import trajreg, sys; assert 'torch' not in sys.modules; "
         "assert trajreg.__version__; "
         "names = [getattr(trajreg, n) for n in trajreg.__all__]; "
         "assert 'torch' in sys.modules and all(names)")


def test_the_package_run_is_the_one_that_runs_any_config():
    """``trajreg.run`` runs distributed configs too: it is ``trajreg.distributed.run``,
    above ``trajreg.run.runner.run`` (one process) in the layers. (Read before anything
    imports the subpackage ``trajreg.run``, whose import binds the same name.)"""
    _run("import trajreg; run = trajreg.run; from trajreg.distributed import launch; "
         "assert run is launch.run, run")


def test_the_study_command_loads_the_report_libraries_only_to_report():
    """``trajreg study`` checks a study file and its options before it loads scipy and
    matplotlib (the report's), and ``trajreg.run.summary`` (read by studies) needs no
    runner; the lazy entries still resolve."""
    _run("import trajreg.study.cli, trajreg.run.summary, sys; "
         "heavy = [m for m in ('scipy', 'matplotlib', 'trajreg.run.runner') "
         "if m in sys.modules]; assert not heavy, heavy; "
         "import trajreg.study, trajreg.run; "
         "assert all(getattr(trajreg.study, n) for n in trajreg.study.__all__); "
         "assert trajreg.run.run and trajreg.run.analyze")


def test_help_does_not_import_torch():
    """``trajreg --help`` (and each command's) builds the parser without torch, the
    config or the registries: 0.1 s instead of 3 s."""
    _run("import sys; from trajreg.cli import parser; "
         "p = parser(); p.format_help(); "
         "[c.format_help() for c in p._subparsers._group_actions[0].choices.values()]; "
         "assert 'torch' not in sys.modules, 'torch imported'")
