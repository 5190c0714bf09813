"""A NaN written into column ``a`` of metrics.parquet was analysed: gamma_hat(0)
became -inf, exit 0. The columns the analysis reads must be finite (a diverged run's
last row aside); with checksums.json the file's CRC32 differs too. One line naming the
file, the column and the step, exit 2, the run unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.regressions._damaged_runs import assert_refused, copy_run, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("nan") / "r", "store")


@pytest.mark.parametrize("manifest", [True, False])
def test_a_nan_in_column_a_is_refused(run, tmp_path, manifest):
    damaged = copy_run(run, tmp_path / "r", manifest=manifest)
    table = pd.read_parquet(damaged / "metrics.parquet")
    table.loc[5, "a"] = np.nan
    table.to_parquet(damaged / "metrics.parquet", index=False)
    assert_refused(damaged, "metrics.parquet", "column 'a' is nan at step 5 (not finite)")
