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
