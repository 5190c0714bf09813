"""What every benchmark prints: medians, section titles and plain-text tables."""

from __future__ import annotations

import math
import statistics


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def section(title: str) -> None:
    print("\n" + "=" * 100 + "\n" + title + "\n" + "=" * 100, flush=True)


def table(header: list[str], rows: list[list], indent: str = "  ") -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(indent + "  ".join(f"{str(c):<{w}}" for c, w in zip(r, widths, strict=True)))
