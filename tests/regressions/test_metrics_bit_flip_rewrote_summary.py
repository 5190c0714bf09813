"""One bit flipped in metrics.parquet (a value of column ``a`` 16 times larger, the
file still a readable parquet) was analysed: ``trajreg analyze`` rewrote the summary
from it (gamma_bar 0.943 -> 1.307), exit 0. Every file of a run is now covered by
checksums.json; the flip is one line naming the file, exit 2, the run unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.regressions._damaged_runs import assert_refused, copy_run, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("flip") / "r", "store")


def _flip_16x(path) -> None:
    """Flip the exponent bit that makes one stored value of ``a`` 16 times larger, at a
    place where the file stays readable (found by trying the values of ``a``)."""
    raw = path.read_bytes()
    a = pd.read_parquet(path)["a"].to_numpy()
    for value in a[1:]:
        at = raw.find(np.float64(value).tobytes())
        bits = np.float64(value).view(np.uint64)
        if at < 0 or bits >> np.uint64(54) & np.uint64(1):  # exponent bit 2 set: /16
            continue
        data = bytearray(raw)
        data[at + 6] ^= 1 << 6  # exponent bit 2: 2^4 = 16 times the value
        path.write_bytes(bytes(data))
        try:
            got = pd.read_parquet(path)["a"].to_numpy()
        except Exception:  # noqa: BLE001 - try the next value
            continue
        if np.count_nonzero(got != a) == 1 and np.isclose(got[a == value][0] / value, 16):
            return
    pytest.fail("no value of column a found to flip")  # pragma: no cover


def test_a_flipped_metrics_value_is_refused(run, tmp_path):
    damaged = copy_run(run, tmp_path / "r")
    _flip_16x(damaged / "metrics.parquet")
    assert_refused(damaged, "metrics.parquet",  # the old analysis untouched
                   "checksum mismatch (against checksums.json)")
