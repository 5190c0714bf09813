"""What a run is doing, one line per phase on stderr.

A run spends its time in phases (training, measuring against x*, writing the run
directory). On a terminal the training and replay phases also show tqdm bars, which
vanish when done; without a terminal (a log file, a batch job) bars are off, so
these lines are all there is::

    trajreg: training 30 epochs (960 steps) ...
    trajreg: measuring (store) ...
    trajreg: writing runs/bn ...

``progress`` follows the runner's argument: None (the default) and True print,
False (studies' workers, ``trajreg --quiet``) prints nothing.
"""

from __future__ import annotations

import sys
from typing import TextIO


def phase(message: str, progress: bool | None = None, stream: TextIO | None = None) -> None:
    """Print ``trajreg: MESSAGE ...`` on one line (flushed) unless ``progress`` is False."""
    if progress is False:
        return
    out = sys.stderr if stream is None else stream
    print(f"trajreg: {message} ...", file=out, flush=True)
