"""A valid metrics.parquet with rows removed was accepted: ``trajreg analyze`` wrote
``n_steps`` 19 while ``epoch_ends`` said 22 and the verified trajectory held 22 steps.
The rows must be the steps summary.json counts; with checksums.json the file's size and
CRC32 differ too. One line naming the file, exit 2, the run unchanged, with or
without checksums.json (an older run)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.regressions._damaged_runs import assert_refused, copy_run, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("rows") / "r", "store", epochs=3)


@pytest.mark.parametrize("manifest", [True, False])
def test_metrics_with_rows_removed_are_refused(run, tmp_path, manifest):
    damaged = copy_run(run, tmp_path / "r", manifest=manifest)
    table = pd.read_parquet(damaged / "metrics.parquet")
    assert len(table) == 24
    table.drop(index=[3, 10, 17, 18, 19]).to_parquet(damaged / "metrics.parquet",
                                                     index=False)
    assert_refused(damaged, "metrics.parquet",
                   "holds 19 rows, not steps 0-23 (summary.json says 24 steps, epoch ends "
                   "[8, 16, 24])")
