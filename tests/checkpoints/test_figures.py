"""The series' figures are drawn for any table a measurement can write: negative and
zero alignments, infinite or nan r, a diverged series, no MLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trajreg.checkpoints.figures import FIGURES, write_figures


def _table(a: list[float], b: list[float], r: list[float]) -> pd.DataFrame:
    n = len(a)
    return pd.DataFrame({"step": np.arange(n) * 10, "F": np.linspace(2, 1, n), "a": a,
                         "b": b, "a_disp": a, "r": r, "r_disp": r})


@pytest.mark.parametrize("case", ["positive", "mixed", "infinite", "nan"])
def test_figures_draw_whatever_the_values(tmp_path: Path, case: str) -> None:
    values = {"positive": ([3.0, 2.0, 0.0], [1.0, 0.5, 0.0], [3.0, 4.0, math.nan]),
              "mixed": ([-3.0, 2.0, 0.0], [1.0, -0.5, 0.0], [-3.0, -4.0, math.nan]),
              "infinite": ([1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [math.inf, 1.0, math.nan]),
              "nan": ([math.nan] * 3, [math.nan] * 3, [math.nan] * 3)}[case]
    summary = {"reference_step": 20, "window": [0, 2], "gamma_hat": {"0.0": 1.0},
               "checkpoints": {"gamma_hat_disp": {"0.0": math.inf}},
               "mli": None if case == "nan" else {"alpha": [0.0, 1.0], "loss": [2.0, 1.0],
                                                  "monotone": True, "max_bump": 0.0}}
    paths = write_figures(tmp_path, _table(*values), summary)
    assert [p.name for p in paths[:3]] == list(FIGURES)
    assert all(p.stat().st_size > 1000 for p in paths)
    assert (tmp_path / "mli.png").exists() == (case != "nan")
