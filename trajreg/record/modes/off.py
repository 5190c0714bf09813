"""Record mode ``off``: no hooks, nothing measured (losses only; the benchmark baseline)."""

from __future__ import annotations

from typing import ClassVar

from trajreg.record.measured import Measured
from trajreg.record.modes.base import MeasureContext, RecordMode


class OffMode(RecordMode):
    name = "off"
    hooks = False
    shardable: ClassVar[bool] = True  # records nothing, of a shard as of all of x
    measures: ClassVar[bool] = False
    reanalyse: ClassVar[tuple[str, ...]] = ()
    cost = "memory O(d), no disk"

    def measure(self, ctx: MeasureContext, k: int) -> Measured | None:
        return None
